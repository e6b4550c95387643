"""The container images the kfp components run in, named after the code they hold.

An image tag is ``<version>-<source digest>``: the package version from pyproject.toml and a digest of every
file the image runs (pyproject.toml, src/, the Dockerfiles; the README it also copies changes nothing), so the
compiled pipeline can only name an image built from the same code, and any change to the code gives a new tag
(and a stale compiled pipeline, which a test catches). ``build_commands`` gives the ``docker build`` /
``docker push`` lines that make exactly those tags; the base image is pinned by digest when docker resolves it.
"""

from __future__ import annotations

import hashlib
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from image_emotion.errors import ConfigError
from image_emotion.revision import git_revision

DEFAULT_REGISTRY = "ghcr.io/image-emotion"
IMAGE_NAME = "image-emotion"
DOCKERFILES = {"cpu": "docker/Dockerfile.cpu", "cuda": "docker/Dockerfile.cuda"}
BASE_IMAGE = "python:3.11.7-slim-bookworm"  # the Dockerfiles' default; pinned by digest at build time
BUILT_FROM = ("pyproject.toml", "src", *DOCKERFILES.values())  # what `docker build` copies, less the README
SKIPPED = ("__pycache__", ".egg-info", ".pyc")  # build leftovers .dockerignore also leaves out


def source_root() -> Path:
    """The source checkout this package is installed from (the images are built there)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "pyproject.toml").is_file() or not (root / "docker").is_dir():
        raise ConfigError(
            f"{root}: not a source checkout of image-emotion (no pyproject.toml / docker/); compile the pipeline "
            "and build the images from a clone installed with `pip install -e .`"
        )
    return root


def _image_files(root: Path) -> Iterator[Path]:
    for name in BUILT_FROM:
        path = root / name
        if path.is_file():
            yield path
            continue
        for file in sorted(path.rglob("*")):
            if file.is_file() and not any(part.endswith(SKIPPED) for part in file.relative_to(root).parts):
                yield file


def source_digest(root: Path | None = None) -> str:
    """sha256 of the files an image is built from (relative paths and contents), hex."""
    root = root or source_root()
    digest = hashlib.sha256()
    for file in _image_files(root):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()


def package_version(root: Path | None = None) -> str:
    root = root or source_root()
    return tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]


@dataclass(frozen=True)
class Images:
    """The two images of one source tree: ``cpu`` for every step, ``cuda`` for the GPU steps."""

    registry: str
    tag: str  # <version>-<first 12 hex digits of the source digest>

    @property
    def cpu(self) -> str:
        return f"{self.registry}/{IMAGE_NAME}:{self.tag}-cpu"

    @property
    def cuda(self) -> str:
        return f"{self.registry}/{IMAGE_NAME}:{self.tag}-cuda"

    def of(self, kind: str) -> str:
        return {"cpu": self.cpu, "cuda": self.cuda}[kind]


def images(registry: str = DEFAULT_REGISTRY, root: Path | None = None) -> Images:
    """The images of the source tree at ``root`` (default: this checkout) in ``registry``."""
    root = root or source_root()
    if not registry or registry.endswith("/") or " " in registry:
        raise ConfigError(f"registry {registry!r}: give a registry and namespace such as ghcr.io/<org>")
    return Images(registry, f"{package_version(root)}-{source_digest(root)[:12]}")


def resolve_base_digest(base: str = BASE_IMAGE) -> str:
    """``base`` pinned by digest (``python:…@sha256:…``) as docker resolves it now (pulls the image)."""
    try:
        subprocess.run(["docker", "pull", "--quiet", base], check=True, capture_output=True, text=True)
        repo_digest = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{index .RepoDigests 0}}", base],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise ConfigError(f"docker cannot resolve {base}: {detail.strip()}; start docker or pass --no-pin") from None
    return f"{base}@{repo_digest.split('@', 1)[1]}"


def build_commands(
    built: Images, base: str = BASE_IMAGE, push: bool = False, root: Path | None = None
) -> list[list[str]]:
    """``docker build`` of both images with the tags the compiled pipeline names (and ``docker push``)."""
    root = root or source_root()
    commands = []
    for kind, dockerfile in DOCKERFILES.items():
        commands.append([
            "docker", "build", "-f", dockerfile, "--build-arg", f"BASE_IMAGE={base}",
            "--build-arg", f"IMAGE_TAG={built.of(kind)}", "--build-arg", f"GIT_REVISION={git_revision(root)}",
            "-t", built.of(kind), ".",
        ])  # fmt: skip
    if push:
        commands += [["docker", "push", built.of(kind)] for kind in DOCKERFILES]
    return commands
