"""End to end: the real `dvc repro` on the embedded dataset, incremental and param-sensitive."""

import json
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.e2e


def _dvc(cwd, *args):
    proc = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture
def project(tmp_path, repo_root):
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(repo_root / name, tmp_path / name)
    shutil.copytree(repo_root / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    _dvc(tmp_path, "init", "--no-scm", "-q")
    return tmp_path


def test_dvc_repro_runs_then_is_a_noop_then_reruns_only_what_changed(project):
    out = _dvc(project, "repro")
    assert "Running stage 'make_embedded'" in out and "Running stage 'prepare'" in out
    metrics = json.loads((project / "metrics" / "prepare.json").read_text())
    assert metrics["num_images"] == 400 and metrics["num_bad"] == 0

    again = _dvc(project, "repro")
    assert "Running stage" not in again and "up to date" in again

    params = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(params.replace("folds: 5", "folds: 4"))
    third = _dvc(project, "repro")
    assert "Running stage 'prepare'" in third and "Running stage 'make_embedded'" not in third
    assert json.loads((project / "metrics" / "prepare.json").read_text())["num_images"] == 400
