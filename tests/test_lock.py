"""The images' hashed lock: fresh against pyproject.toml, complete, every file hashed; a stale one named in one
line before any build."""

import re
import shutil
import subprocess
import sys

import pytest

from image_emotion.lock import LOCK, LockError, LockInputs, check_lock, pins


def _project(tmp_path, repo_root):
    """A copy of the project's pyproject.toml and lock, to edit."""
    (tmp_path / "requirements").mkdir()
    shutil.copy(repo_root / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copy(repo_root / LOCK, tmp_path / LOCK)
    return tmp_path


def test_the_checked_in_lock_matches_pyproject_and_pins_every_file_by_hash(repo_root):
    pinned = check_lock(repo_root)
    text = (repo_root / LOCK).read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 3)[3])  # one entry a package, after the header
    assert len(entries) >= len(pinned) > 150  # more entries: packages only other platforms / Pythons install
    for entry in entries:  # each pinned line carries at least one sha256 of a distribution file
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), entry.splitlines()[0]
    assert pinned["torch"] == "2.14.1" and pinned["torchvision"] == "0.29.1" and pinned["kfp"] == "2.17.0"
    assert {"setuptools", "wheel", "transformers"} <= set(pinned)  # the build backend and the gen extra


def test_the_lock_is_what_this_environment_runs(repo_root):
    """The venv the tests run in and the images hold the same heavy stack."""
    from importlib.metadata import version

    pinned = check_lock(repo_root)
    for name in ("torch", "torchvision", "mlflow", "kfp", "dvc", "numpy", "pandas", "pillow", "transformers"):
        assert version(name) == pinned[name], f"{name}: {version(name)} here, {pinned[name]} in the image"


def test_a_dependency_edited_without_relocking_is_named(tmp_path, repo_root):
    root = _project(tmp_path, repo_root)
    text = (root / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(text.replace('"tqdm>=4.66",', '"tqdm>=4.66",\n  "rich>=13",'))
    with pytest.raises(
        LockError, match=r"image\.txt does not match pyproject\.toml's dependencies.*image-emotion lock"
    ):
        check_lock(root)


def test_a_pin_outside_its_requirement_is_named(tmp_path, repo_root):
    root = _project(tmp_path, repo_root)
    lock = (root / LOCK).read_text()
    (root / LOCK).write_text(lock.replace("\nmlflow==3.17.2 ", "\nmlflow==3.16.0 "))
    with pytest.raises(LockError, match=r"mlflow==3\.16\.0 does not satisfy 'mlflow==3\.17\.2'"):
        check_lock(root)
    (root / LOCK).write_text(re.sub(r"\nfaiss-cpu==[^\n]*(\n +--hash[^\n]*)*", "", lock))
    with pytest.raises(LockError, match="faiss-cpu is not pinned"):
        check_lock(root)
    (root / LOCK).unlink()
    with pytest.raises(LockError, match="no lock of the image's packages; run `image-emotion lock`"):
        check_lock(root)


def test_inputs_digest_covers_dependencies_extras_and_build_requirements(tmp_path, repo_root):
    root = _project(tmp_path, repo_root)
    first = LockInputs.read(root).digest()
    text = (root / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(
        text.replace('gen = ["transformers==5.24.0"]', 'gen = ["transformers==5.25.0"]')
    )
    second = LockInputs.read(root).digest()
    (root / "pyproject.toml").write_text(text.replace('"wheel"]', '"wheel>=0.40"]'))
    third = LockInputs.read(root).digest()
    (root / "pyproject.toml").write_text(text.replace('"pytest>=8.0",', '"pytest>=8.1",'))  # dev: not in the image
    assert len({first, second, third}) == 3 and LockInputs.read(root).digest() == first


def test_pins_reads_names_versions_and_the_markers_of_the_images_platform():
    text = (
        "# x\nFoo_Bar==1.2 ; sys_platform == 'linux' \\\n    --hash=sha256:00\nbaz[extra]==3.0rc1 \\\n"
        "numpy==2.4.6 ; python_full_version < '3.12' \\\nnumpy==2.5.5 ; python_full_version >= '3.12' \\\n"
        "pywin32==312 ; sys_platform == 'win32' \\\n"
    )
    assert pins(text) == {"foo-bar": "1.2", "baz": "3.0rc1", "numpy": "2.4.6"}
    assert pins(text, {"sys_platform": "win32", "python_full_version": "3.12.1"})["numpy"] == "2.5.5"


def test_lock_check_command(repo_root):
    done = subprocess.run(
        [sys.executable, "-m", "image_emotion.cli", "lock", "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0 and f'"packages": {len(check_lock(repo_root))}' in done.stdout
