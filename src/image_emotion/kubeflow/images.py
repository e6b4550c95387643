"""The container images the kfp components run in, named after the code they hold.

An image tag is ``<version>-<source digest>``: the package version from pyproject.toml and a digest of every
file the image is built from (pyproject.toml, the hashed lock, src/, the Dockerfile; the README it also copies
changes nothing), so the compiled pipeline can only name an image built from the same code, and any change to the
code gives a new tag (and a stale compiled pipeline, which a test catches). Once the images are pushed, the
pipeline can name them by digest instead (``repo@sha256:…``, resolved from the registry by
``kubeflow/registry.py``): what a cluster pulls is then exactly what was built, whatever the tag names later.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from image_emotion.errors import ConfigError
from image_emotion.lock import CPU_LOCK, LOCK

DEFAULT_REGISTRY = "ghcr.io/image-emotion"
IMAGE_NAME = "image-emotion"
DOCKERFILE = "docker/Dockerfile"
KINDS = ("cpu", "cuda")  # the Dockerfile's targets
BASE_IMAGE = "python:3.11.7-slim-bookworm"  # the Dockerfile's default base; pinned by digest at build time
# what the build copies, less the README (the CPU lock only where it exists)
BUILT_FROM = ("pyproject.toml", LOCK.as_posix(), CPU_LOCK.as_posix(), "src", DOCKERFILE)
SKIPPED = ("__pycache__", ".egg-info", ".pyc")  # build leftovers .dockerignore also leaves out
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


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
    """The two images of one source tree: ``cpu`` for every step, ``cuda`` for the GPU steps. With ``digests``
    (kind -> ``sha256:…`` of the pushed manifest) each is named by digest, else by its tag."""

    registry: str
    tag: str  # <version>-<first 12 hex digits of the source digest>
    digests: Mapping[str, str] = field(default_factory=dict)

    def tagged(self, kind: str) -> str:
        """``<registry>/image-emotion:<tag>-<kind>``: what a build tags and pushes."""
        if kind not in KINDS:
            raise ConfigError(f"image kind {kind!r}: one of {', '.join(KINDS)}")
        return f"{self.registry}/{IMAGE_NAME}:{self.tag}-{kind}"

    def of(self, kind: str) -> str:
        """The reference a pod pulls: by digest when known, else the tag."""
        tagged = self.tagged(kind)
        if kind in self.digests:
            return f"{self.repository}@{self.digests[kind]}"
        return tagged

    @property
    def repository(self) -> str:
        return f"{self.registry}/{IMAGE_NAME}"

    @property
    def cpu(self) -> str:
        return self.of("cpu")

    @property
    def cuda(self) -> str:
        return self.of("cuda")

    def by_digest(self, digests: Mapping[str, str]) -> Images:
        """These images named by the given manifest digests (``sha256:<64 hex>`` each)."""
        for kind, digest in digests.items():
            self.tagged(kind)
            if not _DIGEST.fullmatch(digest):
                raise ConfigError(f"{self.tagged(kind)}: {digest!r} is not a manifest digest (sha256:<64 hex>)")
        return Images(self.registry, self.tag, dict(digests))


def images(registry: str = DEFAULT_REGISTRY, root: Path | None = None) -> Images:
    """The images of the source tree at ``root`` (default: this checkout) in ``registry``."""
    root = root or source_root()
    if not registry or registry.endswith("/") or " " in registry:
        raise ConfigError(f"registry {registry!r}: give a registry and namespace such as ghcr.io/<org>")
    return Images(registry, f"{package_version(root)}-{source_digest(root)[:12]}")
