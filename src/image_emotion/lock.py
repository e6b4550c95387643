"""The hashed lock of everything the container images install, generated from pyproject.toml by uv.

``requirements/image.txt`` pins every package of the image (the package's dependencies, its ``gen`` extra for
seed 001, and the build requirements that install the package itself) to one version with the sha256 of each of
its files, for every platform (``uv pip compile --universal --generate-hashes``); the images install it with
``pip install --require-hashes``, so a rebuild from the same source gets the same packages wherever they are
downloaded from. Its first line records a digest of the inputs it was compiled from (the dependency lists of
pyproject.toml): ``check_lock`` compares it with pyproject.toml as it is now, so a dependency edited without
re-locking is named in one line before any build (and by the test suite).

``requirements/image-cpu.txt`` is the same lock with PyTorch's CPU-only wheels (``torch==…+cpu``) from
PyTorch's CPU wheel index; ``image-emotion lock`` writes it only where that index answers. The CPU image is
built from it when it exists, else from the CUDA lock (PyPI's torch is the CUDA build, which runs on a CPU).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from image_emotion.errors import ImageEmotionError
from image_emotion.files import write_text_atomic

LOCK = Path("requirements/image.txt")
CPU_LOCK = Path("requirements/image-cpu.txt")
EXTRAS = ("gen",)  # what the images install beside the core dependencies (setup.sh adds dev and server)
PYTHON = "3.11"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
HEADER = "# inputs-sha256: "
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)(?: ; ([^\\\n]+?))?\s*\\?$", re.M)


class LockError(ImageEmotionError):
    """The lock is missing, stale, or could not be compiled."""


@dataclass(frozen=True)
class LockInputs:
    """What a lock is compiled from: the requirement strings of pyproject.toml it covers."""

    dependencies: tuple[str, ...]
    extras: dict[str, tuple[str, ...]]
    build: tuple[str, ...]

    @classmethod
    def read(cls, root: Path) -> LockInputs:
        data = tomllib.loads((root / "pyproject.toml").read_text())
        optional = data["project"].get("optional-dependencies", {})
        missing = [e for e in EXTRAS if e not in optional]
        if missing:
            raise LockError(f"{root / 'pyproject.toml'}: no optional-dependencies {missing} to lock; add them")
        return cls(
            tuple(data["project"]["dependencies"]),
            {e: tuple(optional[e]) for e in EXTRAS},
            tuple(data["build-system"]["requires"]),
        )

    def digest(self) -> str:
        text = json.dumps({"dependencies": self.dependencies, "extras": self.extras, "build": self.build})
        return hashlib.sha256(text.encode()).hexdigest()

    def requirements(self) -> list[str]:
        return [*self.dependencies, *(r for e in EXTRAS for r in self.extras[e]), *self.build]


IMAGE_PLATFORM = {  # where the images run: the lock's markers are read for this environment
    "python_version": PYTHON, "python_full_version": f"{PYTHON}.2", "sys_platform": "linux", "os_name": "posix",
    "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}  # fmt: skip


def pins(text: str, environment: dict[str, str] | None = None) -> dict[str, str]:
    """``{normalized name: version}`` of a lock's ``name==version [; marker]`` lines whose marker holds in
    ``environment`` (default: the images' platform, ``IMAGE_PLATFORM``)."""
    from packaging.markers import Marker

    found = {}
    for name, version, marker in _PIN.findall(text):
        if marker and not Marker(marker).evaluate(environment or IMAGE_PLATFORM):
            continue
        found[_normalize(name)] = version
    return found


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_lock(root: Path, lock: Path = LOCK) -> dict[str, str]:
    """The lock's pins, after checking that it was compiled from pyproject.toml as it is now and pins every
    requirement of it to a version the requirement allows; a ``LockError`` naming the fix otherwise."""
    from packaging.requirements import Requirement

    path = root / lock
    if not path.is_file():
        raise LockError(f"{path}: no lock of the image's packages; run `image-emotion lock`")
    text = path.read_text()
    inputs = LockInputs.read(root)
    first = text.splitlines()[0] if text else ""
    if first != HEADER + inputs.digest():
        raise LockError(f"{path} does not match pyproject.toml's dependencies (edited since); run `image-emotion lock`")
    pinned = pins(text)
    for line in inputs.requirements():
        requirement = Requirement(line)
        name = _normalize(requirement.name)
        if name not in pinned:
            raise LockError(f"{path}: {requirement.name} is not pinned; run `image-emotion lock`")
        if not requirement.specifier.contains(pinned[name], prereleases=True):
            raise LockError(
                f"{path}: {requirement.name}=={pinned[name]} does not satisfy {line!r}; run `image-emotion lock`"
            )
    return pinned


def _uv() -> str:
    try:
        from uv import find_uv_bin  # the uv wheel of the dev extra, in this environment

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
    if not found:
        raise LockError("uv not found; install the dev extra (`pip install -e '.[dev]'`) to compile the lock")
    return found


def compile_lock(root: Path, out: Path, index_args: tuple[str, ...] = ()) -> Path:
    """Compile the hashed, universal lock of the image's packages into ``root / out`` (atomically): uv resolves
    pyproject.toml's dependencies, the ``gen`` extra and the build requirements, for Python 3.11 on every
    platform. ``index_args``: uv's index options (e.g. the CPU wheel index of PyTorch)."""
    inputs = LockInputs.read(root)
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.in"
        requirements.write_text("\n".join(inputs.requirements()) + "\n")
        command = [
            _uv(), "pip", "compile", str(requirements), "--universal", "--python-version", PYTHON,
            "--generate-hashes", "--no-header", "--no-annotate", "--quiet", *index_args, "-o", str(Path(tmp) / "lock"),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, cwd=root)
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise LockError(f"uv could not lock pyproject.toml's dependencies: {detail}")
        body = (Path(tmp) / "lock").read_text()
    header = (
        f"{HEADER}{inputs.digest()}\n"
        "# The image's packages, every file hashed (pip install --require-hashes). Generated by `image-emotion lock`\n"
        "# from pyproject.toml; do not edit. A test checks it against pyproject.toml.\n"
    )
    write_text_atomic(root / out, header + body)
    return root / out


def index_reachable(url: str, seconds: float = 10) -> bool:
    """Whether a package index answers at ``url`` (its ``torch/`` page)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/torch/", timeout=seconds) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def lock_all(root: Path, torch_cpu_index: str = TORCH_CPU_INDEX) -> dict[str, str]:
    """Compile both locks; the CPU-only one only where ``torch_cpu_index`` answers (else it is removed, so a
    build cannot use a stale one). Returns what was written and what was not, with the reason."""
    written = {"lock": str(compile_lock(root, LOCK))}
    if index_reachable(torch_cpu_index):
        # uv sends torch, torchvision and their CUDA-only dependencies to PyTorch's CPU index, the rest to PyPI
        written["cpu_lock"] = str(compile_lock(root, CPU_LOCK, ("--torch-backend", "cpu")))
    else:
        (root / CPU_LOCK).unlink(missing_ok=True)
        written["cpu_lock"] = f"not written: {torch_cpu_index} does not answer (the CPU image uses {LOCK})"
    return written
