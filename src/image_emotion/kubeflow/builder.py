"""Build and push the images with the tool this machine has: docker where a Docker daemon answers, else podman
(or buildah), which need no daemon; a Debian base made from Debian's own packages where no registry serves one.

Each build is ``<tool> build -f docker/Dockerfile --target <cpu|cuda>`` with the base pinned by digest, the hashed
lock, and the tag the compiled pipeline names (``kubeflow/images.py``); ``push`` sends both to the registry and
returns the manifest digests the registry gives them (``kubeflow/registry.py``), which ``compile-pipeline
--by-digest`` writes into the pipeline.

Podman's settings that this kind of machine needs are written to ``<state dir>/containers.conf`` and passed with
``CONTAINERS_CONF``, each with its reason beside it; nothing in the system's configuration changes.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image_emotion.errors import ImageEmotionError
from image_emotion.kubeflow.images import DOCKERFILE, KINDS, Images
from image_emotion.kubeflow.registry import manifest_digest, on_loopback, split_reference
from image_emotion.lock import CPU_LOCK, LOCK, TORCH_CPU_INDEX, check_lock
from image_emotion.revision import git_revision

DEBIAN_PACKAGES = (  # what the container tooling needs, from Debian's own packages (no daemon, no Docker Hub)
    "podman", "buildah", "skopeo", "runc", "uidmap", "fuse-overlayfs", "slirp4netns", "mmdebstrap",
    "containernetworking-plugins", "catatonit", "conmon", "docker-registry",
)  # fmt: skip
WORK_DIR = Path(".containers")  # the tools' settings, the Debian base's rootfs, wheels, registry and check runs
DEBIAN_BASE = "localhost/image-emotion-base:bookworm"  # the base made by mmdebstrap, Python 3.11.2
DEBIAN_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CONTAINERS_CONF = """\
# podman's settings for image-emotion's builds and container runs (CONTAINERS_CONF; the system's stay as they are)
[containers]
# containers without CAP_SYS_RESOURCE cannot raise their open-file limit to podman's default (1048576):
# "setrlimit RLIMIT_NOFILE: Operation not permitted"; these limits are within what a container may set
default_ulimits = ["nofile=8192:8192", "nproc=4096:4096"]
# the host's network: a container reaches the tracking server and the registry on 127.0.0.1, as a pod reaches
# its cluster's services
netns = "host"
[engine]
# a push's temporary copies of the layers (up to ~2 GB here) go under the work folder, emptied after each push,
# not into /var/tmp where an interrupted push leaves them
image_copy_tmp_dir = "{tmp}"
{runtime}"""
RUNC = """# crun fails where cgroups are in hybrid mode ("cgroups in hybrid mode not supported"); runc runs there
runtime = "runc"
"""
PUSH_FREE_BYTES = 8 * 2**30  # measured: a first push of both images writes ~3.5 GB of blobs and ~2 GB of copies


class ContainerToolError(ImageEmotionError):
    """No usable container tool, a base image that cannot serve, or a build / push that failed."""


@dataclass(frozen=True)
class Engine:
    """A container tool: its program name and the environment its commands run with."""

    name: str  # docker | podman | buildah
    env: dict[str, str] = field(default_factory=dict)

    def command(self, *args: str) -> list[str]:
        return [self.name, *args]

    def run(self, *args: str, capture: bool = False, what: str = "", cwd: Path | None = None) -> str:
        """Run ``<tool> args`` (in ``cwd``); a ``ContainerToolError`` naming ``what`` failed, with the tool's last
        line (or, not captured, a pointer to its output above)."""
        done = subprocess.run(
            self.command(*args), env={**os.environ, **self.env}, text=True, cwd=cwd,
            stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None,
        )  # fmt: skip
        if done.returncode != 0:
            tail = ((done.stderr or "").strip().splitlines() or ["see the output above"])[-1]
            raise ContainerToolError(f"{what or shlex.join(self.command(*args[:2]))} failed: {tail}")
        return (done.stdout or "").strip()


def podman_settings(state_dir: Path) -> dict[str, str]:
    """The environment that points podman/buildah at ``state_dir/containers.conf`` (written here)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    conf = state_dir / "containers.conf"
    tmp = push_tmp_dir(state_dir)
    tmp.mkdir(exist_ok=True)  # podman stats it before any copy
    conf.write_text(CONTAINERS_CONF.format(tmp=tmp, runtime=RUNC if shutil.which("runc") else ""))
    return {"CONTAINERS_CONF": str(conf.resolve())}


def push_tmp_dir(state_dir: Path) -> Path:
    """Where podman and buildah keep a push's temporary layer copies (``image_copy_tmp_dir``)."""
    return (state_dir / "tmp").resolve()


def default_wheelhouse() -> Path:
    """The wheel cache that every checkout of this machine shares (files are hash-checked against the lock on
    every install): ``$XDG_CACHE_HOME/image-emotion/wheels``, else ``~/.cache/image-emotion/wheels``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "image-emotion" / "wheels"


def require_free(path: Path, needed: int, what: str) -> None:
    """A ``ContainerToolError`` in one line when the filesystem of ``path`` has less than ``needed`` bytes free."""
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    if free < needed:
        raise ContainerToolError(
            f"{what} needs about {needed / 2**30:.0f} GiB free under {path.resolve()}, which has "
            f"{free / 2**30:.1f} GiB: free some space (e.g. `podman image prune`, or remove an old "
            f"{WORK_DIR}/registry) and run it again"
        )


def _docker_daemon() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def find_engine(state_dir: Path, prefer: str = "auto") -> Engine:
    """docker when its daemon answers, else podman, else buildah (``prefer`` one by name); one line naming the
    packages to install when there is none."""
    order = ("docker", "podman", "buildah") if prefer == "auto" else (prefer,)
    for name in order:
        if name == "docker" and _docker_daemon():
            return Engine("docker")
        if name in ("podman", "buildah") and shutil.which(name):
            return Engine(name, podman_settings(state_dir))
    wanted = "a Docker daemon" if prefer == "docker" else f"{prefer if prefer != 'auto' else 'podman'}"
    raise ContainerToolError(
        f"no container tool found ({wanted}); install Debian's packages, which need no daemon: "
        f"`apt-get install {' '.join(DEBIAN_PACKAGES)}`, or start a Docker daemon"
    )


def image_exists(engine: Engine, image: str) -> bool:
    verb = ("image", "inspect") if engine.name != "buildah" else ("inspect", "--type", "image")
    return (
        subprocess.run(engine.command(*verb, image), env={**os.environ, **engine.env}, capture_output=True).returncode
        == 0
    )


def make_debian_base(engine: Engine, work: Path, suite: str = "bookworm", mirror: str = DEBIAN_MIRROR) -> str:
    """The Debian base (minbase + python3, python3-venv, ca-certificates; Python 3.11 on bookworm) built by
    ``mmdebstrap`` from Debian's packages and imported as ``DEBIAN_BASE``; reused when it exists."""
    if image_exists(engine, DEBIAN_BASE):
        return DEBIAN_BASE
    if engine.name == "buildah" or not shutil.which("mmdebstrap"):
        raise ContainerToolError(
            "mmdebstrap (and podman or docker) needed to make the Debian base; `apt-get install mmdebstrap podman`, "
            "or pass --base-image"
        )
    work.mkdir(parents=True, exist_ok=True)
    rootfs = work / f"{suite}-rootfs.tar"
    done = subprocess.run(
        ["mmdebstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "--quiet", suite,
         str(rootfs), mirror],
        capture_output=True, text=True, env={**os.environ, "SOURCE_DATE_EPOCH": "0"},
    )  # fmt: skip
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ContainerToolError(f"mmdebstrap of Debian {suite} from {mirror} failed: {tail}")
    # pip installs into the image's own virtualenv; the marker only guards the system Python
    engine.run("import", "--change", 'CMD ["python3"]', str(rootfs), DEBIAN_BASE, capture=True, what="import base")
    rootfs.unlink()
    return DEBIAN_BASE


def check_python(engine: Engine, base: str) -> str:
    """The base's Python version (``3.11.x``); a ``ContainerToolError`` unless it is 3.11."""
    if engine.name == "buildah":
        return "unchecked"  # the Dockerfile's first step refuses another Python
    try:
        version = engine.run(
            "run", "--rm", base, "python3", "-c", "import platform; print(platform.python_version())",
            capture=True, what=f"python3 in {base}",
        )  # fmt: skip
    except ContainerToolError as exc:
        raise ContainerToolError(
            f"base image {base} has no usable python3 ({exc}); pass a base with Python 3.11"
        ) from None
    if not version.startswith("3.11."):
        raise ContainerToolError(f"base image {base} has Python {version}; image-emotion needs 3.11 (--base-image)")
    return version


def pin_base(engine: Engine, base: str) -> str:
    """``base`` (present here: ``resolve_base`` pulls it) named by digest (``name@sha256:…``): its registry
    digest, or the local one when it was made here."""
    if "@sha256:" in base:
        return base
    if engine.name == "docker":
        digests = json.loads(engine.run("image", "inspect", "--format", "{{json .RepoDigests}}", base, capture=True))
        if not digests:
            return base  # built here by docker: no registry digest to name
        return f"{base.rsplit(':', 1)[0]}@{digests[0].split('@', 1)[1]}"
    digest = engine.run("image", "inspect", "--format", "{{.Digest}}", base, capture=True)
    return f"{base.rsplit(':', 1)[0]}@{digest}"


def fill_wheelhouse(root: Path, wheels: Path, lock: Path) -> Path:
    """Download every file of ``lock`` for the image's platform (Linux x86_64, CPython 3.11) into ``wheels``
    with this machine's pip and its configured indexes, hash-checked; what is already there is kept."""
    if platform.system() != "Linux" or platform.machine() != "x86_64" or sys.version_info[:2] != (3, 11):
        raise ContainerToolError("--wheels is filled by this machine's pip: it needs Linux x86_64 and Python 3.11")
    wheels.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--require-hashes", "--no-deps", "-r", str(root / lock),
         "-d", str(wheels)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()
        raise ContainerToolError(f"pip could not download the lock's files into {wheels}: {(errors or ['?'])[-1]}")
    return wheels


@dataclass(frozen=True)
class BuildPlan:
    """What one build of both images uses."""

    images: Images
    base: str  # pinned by digest
    lock: Path  # relative to the source root
    torch_index: str  # "" unless the CPU image installs PyTorch's CPU-only wheels
    revision: str
    wheels: Path | None = None
    ca_bundle: Path | None = None


def plan(built: Images, base: str, root: Path, wheels: Path | None = None) -> tuple[BuildPlan, str]:
    """The build of ``built`` on ``base`` (already pinned) and a one-line note of the CPU image's torch."""
    check_lock(root)
    if (root / CPU_LOCK).is_file():
        check_lock(root, CPU_LOCK)
        lock, index = CPU_LOCK, TORCH_CPU_INDEX
        note = f"the CPU image installs PyTorch's CPU-only wheels ({CPU_LOCK})"
    else:
        lock, index = LOCK, ""
        note = (
            f"no {CPU_LOCK} (PyTorch's CPU index did not answer `image-emotion lock`): the CPU image installs "
            "PyPI's CUDA build of torch from the same lock as the CUDA image (it runs on a CPU; the CUDA libraries "
            "are never loaded there, but they are in the image)"
        )
    ca = HOST_CA_BUNDLE if HOST_CA_BUNDLE.is_file() else None
    return BuildPlan(built, base, lock, index, git_revision(root), wheels, ca), note


def build_command(engine: Engine, p: BuildPlan, kind: str) -> list[str]:
    """``<tool> build`` of one target with the tag the pipeline names; the CUDA image always from the CUDA lock,
    the CPU one from ``p.lock``."""
    lock, index = (p.lock, p.torch_index) if kind == "cpu" else (LOCK, "")
    args = [
        "build", "-f", DOCKERFILE, "--target", kind, "--build-arg", f"BASE_IMAGE={p.base}",
        "--build-arg", f"LOCK={lock.as_posix()}", "--build-arg", f"TORCH_INDEX_URL={index}",
        "--build-arg", f"IMAGE_TAG={p.images.tagged(kind)}", "--build-arg", f"GIT_REVISION={p.revision}",
        "-t", p.images.tagged(kind),
    ]  # fmt: skip
    if engine.name != "docker":
        # buildah 1.28 reuses a cached `ENV X=${ARG}` step after the argument changed (the CUDA image kept the CPU
        # image's tag): the final image's own names are set on it directly
        for key, value in (("IMAGE_EMOTION_IMAGE", p.images.tagged(kind)), ("IMAGE_EMOTION_GIT_REVISION", p.revision)):
            args += ["--env", f"{key}={value}"]
        labels = (("version", p.images.tagged(kind)), ("revision", p.revision), ("base.name", p.base))
        args += [arg for key, value in labels for arg in ("--label", f"org.opencontainers.image.{key}={value}")]
        args += ["--layers"]
        if p.wheels:
            args += ["--volume", f"{p.wheels.resolve()}:/wheels:ro"]
        if p.ca_bundle:  # pip in a build trusts what the host trusts (a proxy's CA, a company's CA)
            args += ["--volume", f"{p.ca_bundle}:/etc/ssl/certs/ca-certificates.crt:ro"]
    elif p.wheels:
        raise ContainerToolError("--wheels mounts a folder into the build: podman or buildah only (--engine podman)")
    return engine.command(*args, ".")


def push_command(engine: Engine, image: str) -> list[str]:
    host = split_reference(image)[0]
    insecure = on_loopback(host) and engine.name != "docker"  # a registry on loopback speaks http
    return engine.command("push", *(["--tls-verify=false"] if insecure else []), image)


def build(engine: Engine, p: BuildPlan, root: Path, kinds: tuple[str, ...] = KINDS) -> dict[str, float]:
    """Build ``kinds``; returns each build's seconds."""
    seconds = {}
    for kind in kinds:
        start = time.monotonic()
        command = build_command(engine, p, kind)
        print(shlex.join(command), flush=True)
        engine.run(*command[1:], what=f"{engine.name} build of the {kind} image", cwd=root)
        seconds[kind] = round(time.monotonic() - start, 1)
    return seconds


def push(engine: Engine, built: Images, work: Path, kinds: tuple[str, ...] = KINDS) -> dict[str, str]:
    """Push ``kinds`` and return the manifest digest the registry gives each. Needs ``PUSH_FREE_BYTES`` free
    under ``work`` (one line saying so before anything is written); the push's temporary copies are removed
    afterwards, whatever happened."""
    require_free(work, PUSH_FREE_BYTES, "pushing the images")
    digests = {}
    try:
        for kind in kinds:
            command = push_command(engine, built.tagged(kind))
            print(shlex.join(command), flush=True)
            engine.run(*command[1:], what=f"{engine.name} push of {built.tagged(kind)}")
            digests[kind] = manifest_digest(built.tagged(kind))
    finally:
        if engine.name != "docker":
            _empty(push_tmp_dir(work))
    return digests


def _empty(folder: Path) -> None:
    """Remove everything inside ``folder`` (kept)."""
    for child in folder.glob("*"):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def remove_older_images(engine: Engine, built: Images) -> list[str]:
    """Remove this machine's images of ``built.repository`` other than ``built``'s own (earlier sources' builds,
    which stay in the registry they were pushed to, and their untagged leftovers), with the layers nothing else
    uses. Nothing outside that repository is touched. Returns what was removed (references, or ids)."""
    if engine.name == "buildah":
        return []
    listed = engine.run("images", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}", built.repository, capture=True)
    keep = {built.tagged(kind) for kind in KINDS}
    kept_ids = {line.split()[0] for line in listed.splitlines() if line.split()[1:] and line.split()[1] in keep}
    older: list[str] = []  # newest first, as listed: a child (the CUDA image) before the image it is built on
    for line in listed.splitlines():
        image_id, ref = line.split(maxsplit=1)
        if ref.rsplit(":", 1)[0] != built.repository:
            continue  # another name of an image that has one in the repository: podman lists it too
        untagged = ref.endswith(":<none>")
        name = image_id if untagged else ref  # a tag is only untagged where the image has others
        if ref not in keep and not (untagged and image_id in kept_ids) and name not in older:
            older.append(name)
    if older:
        engine.run("rmi", *older, capture=True, what="removing the older images")
    return older


def image_size(engine: Engine, image: str) -> int:
    """Bytes of ``image`` in local storage."""
    return int(engine.run("image", "inspect", "--format", "{{.Size}}", image, capture=True))


def resolve_base(engine: Engine, base: str, work: Path) -> tuple[str, str]:
    """(``base`` pinned by digest, its Python version); ``debian`` makes the Debian base here first."""
    if base == "debian":
        base = make_debian_base(engine, work)
    elif engine.name != "buildah" and not image_exists(engine, base) and not base.startswith("localhost/"):
        engine.run("pull", "--quiet", base, capture=True, what=f"pull {base}")
    version = check_python(engine, base)
    return pin_base(engine, base), version


def build_images(
    engine: Engine,
    built: Images,
    base: str,
    root: Path,
    work: Path,
    wheels: Path | None = None,
    push_them: bool = False,
) -> dict[str, Any]:
    """Build both images on ``base`` (a reference, or ``debian``) and push them when asked; returns the base's
    pin, the seconds of each step, the images' sizes and (pushed) their digests."""
    began = time.monotonic()
    pinned, python = resolve_base(engine, base, work)
    seconds: dict[str, float] = {"base": round(time.monotonic() - began, 1)}
    if wheels:
        start = time.monotonic()
        lock = CPU_LOCK if (root / CPU_LOCK).is_file() else LOCK
        fill_wheelhouse(root, wheels, lock)
        seconds["wheels"] = round(time.monotonic() - start, 1)
    p, note = plan(built, pinned, root, wheels)
    print(note, flush=True)
    seconds.update({f"build_{kind}": s for kind, s in build(engine, p, root).items()})
    result: dict[str, Any] = {
        "engine": engine.name, "base": pinned, "python": python, "cpu_torch": note,
        "images": {kind: built.tagged(kind) for kind in KINDS}, "seconds": seconds,
    }  # fmt: skip
    if engine.name != "buildah":
        result["bytes"] = {kind: image_size(engine, built.tagged(kind)) for kind in KINDS}
    if push_them:
        start = time.monotonic()
        result["digests"] = push(engine, built, work)
        seconds["push"] = round(time.monotonic() - start, 1)
    seconds["total"] = round(time.monotonic() - began, 1)
    return result
