"""`docker build` cannot run here: the Dockerfiles are linted against pyproject and the kfp image names."""

import re
import tomllib

import pytest

from image_emotion.kubeflow import IMAGE_CPU, IMAGE_CUDA

DOCKERFILES = {"cpu": ("docker/Dockerfile.cpu", IMAGE_CPU), "cuda": ("docker/Dockerfile.cuda", IMAGE_CUDA)}


def _pins(repo_root) -> dict[str, str]:
    deps = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(re.match(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)", d).groups() for d in deps if "==" in d)


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_is_pinned_non_root_and_installs_the_package(repo_root, kind):
    path, image = DOCKERFILES[kind]
    text = (repo_root / path).read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), f"unpinned base image {base}"
    python_pin = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["requires-python"]
    assert ">=3.11" in python_pin and "<3.12" in python_pin
    pins = _pins(repo_root)
    for pkg in ("torch", "torchvision"):
        found = re.findall(rf"\b{pkg}==(\S+)", text)
        assert found and set(found) == {pins[pkg]}, f"{path}: {pkg} must be pinned to {pins[pkg]} as in pyproject"
    assert re.search(r'pip install "\.\[gen\]"(\s|$)', text), "the package with seed 001's extra"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert '["image-emotion"]' in re.search(r"^ENTRYPOINT\s+(.+)$", text, re.M).group(1)
    assert f"-t {image} " in text, f"{path} must say how to build the image the kfp components use ({image})"


def test_readme_tells_how_to_build_and_push_both_images(repo_root):
    readme = (repo_root / "README.md").read_text()
    for path, image in DOCKERFILES.values():
        assert f"docker build -f {path} -t {image} ." in readme
        assert f"docker push {image}" in readme
