"""`docker build` cannot run here: the Dockerfiles are linted against pyproject, the kfp pipeline's images and
pod settings, and the build command is checked to tag exactly the images the compiled pipeline names."""

import re
import shutil
import tomllib

import pytest
import yaml

from image_emotion.cli import main
from image_emotion.kubeflow import cluster
from image_emotion.kubeflow.images import BASE_IMAGE, DOCKERFILES, images, source_digest


def _pins(repo_root) -> dict[str, str]:
    deps = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(re.match(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)", d).groups() for d in deps if "==" in d)


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_is_pinned_non_root_and_installs_the_package(repo_root, kind):
    text = (repo_root / DOCKERFILES[kind]).read_text()
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M), "the base comes in as a build argument (pinnable)"
    default_base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1)
    assert default_base == BASE_IMAGE and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", default_base)
    python_pin = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["requires-python"]
    assert ">=3.11" in python_pin and "<3.12" in python_pin
    pins = _pins(repo_root)
    for pkg in ("torch", "torchvision"):
        found = re.findall(rf"\b{pkg}==(\S+)", text)
        assert found and set(found) == {pins[pkg]}, f"{kind}: {pkg} must be pinned to {pins[pkg]} as in pyproject"
    assert re.search(r'pip install "\.\[gen\]"(\s|$)', text), "the package with seed 001's extra"
    assert "kfp-kubernetes" in pins and "kfp" in pins  # the executor the components run needs kfp in the image
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] == f"{cluster.UID}:{cluster.UID}", "runAsNonRoot needs a numeric non-root user"
    assert f"--uid {cluster.UID}" in text
    # kfp's launcher creates /gcs, /minio, /s3 for artifacts: a non-root user cannot, so they exist and are its own
    made = re.search(r"mkdir -p ([^&\\]+)", text).group(1).split()
    owned = re.search(r"chown -R \S+ ([^&\\]+)", text).group(1).split()
    for path in ("/gcs", "/minio", "/s3", cluster.DATA_MOUNT, cluster.WORK_MOUNT):
        assert path in made and any(path.startswith(o) for o in owned), path
    assert '["image-emotion"]' in re.search(r"^ENTRYPOINT\s+(.+)$", text, re.M).group(1)
    assert "IMAGE_EMOTION_GIT_REVISION=${GIT_REVISION}" in text  # lineage in a pod names the image's commit


def test_build_command_tags_the_images_the_compiled_pipeline_names(repo_root, capsys):
    assert main(["build-images", "--dry-run", "--push"]) == 0
    lines = capsys.readouterr().out.splitlines()  # exactly the commands, one a line, unindented
    builds = [line.split() for line in lines if line.startswith("docker build")]
    pushes = [line.split()[-1] for line in lines if line.startswith("docker push")]
    tags = {b[b.index("-f") + 1]: b[b.index("-t") + 1] for b in builds}
    assert set(tags) == set(DOCKERFILES.values())
    spec, _ = yaml.safe_load_all((repo_root / "pipelines/image_emotion.yaml").read_text())
    named = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert set(tags.values()) == named == set(pushes)
    assert tags["docker/Dockerfile.cuda"].endswith("-cuda") and tags["docker/Dockerfile.cpu"].endswith("-cpu")
    for build in builds:  # the tag is recorded inside the image too
        assert f"IMAGE_TAG={build[build.index('-t') + 1]}" in build


def _tree(root):
    for name in ("README.md", "src/pkg/mod.py", *DOCKERFILES.values()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"# {name}\n")
    (root / "pyproject.toml").write_text('[project]\nversion = "9.8.7"\n')
    return root


def test_the_image_tag_follows_the_code_and_nothing_else(tmp_path):
    root = _tree(tmp_path / "a")
    first = source_digest(root)
    (root / "README.md").write_text("documentation only\n")
    (root / "src/pkg/__pycache__").mkdir()
    (root / "src/pkg/__pycache__/mod.cpython-311.pyc").write_bytes(b"\0")
    (root / "src/pkg.egg-info").mkdir()
    (root / "src/pkg.egg-info/PKG-INFO").write_text("x")
    assert source_digest(root) == first  # build leftovers and the README do not change what runs
    (root / "src/pkg/mod.py").write_text("# changed\n")
    changed = source_digest(root)
    assert changed != first
    (root / "src/pkg/mod.py").write_text(f"# {'src/pkg/mod.py'}\n")
    (root / "docker/Dockerfile.cuda").write_text("FROM other\n")
    assert source_digest(root) not in (first, changed)
    copy = shutil.copytree(_tree(tmp_path / "b"), tmp_path / "c")
    assert source_digest(copy) == first  # the same files elsewhere: the same tag
    assert (
        images("registry.example.com/ml", root=copy).cpu
        == f"registry.example.com/ml/image-emotion:9.8.7-{first[:12]}-cpu"
    )


def test_readme_tells_how_to_build_and_push_the_images(repo_root):
    readme = (repo_root / "README.md").read_text()
    assert "image-emotion build-images --registry" in readme and "--push" in readme
