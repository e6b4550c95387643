"""Container registries: the digest a registry gives a pushed tag, and a registry of our own on loopback.

``manifest_digest`` asks a registry (the OCI distribution API, ``HEAD /v2/<name>/manifests/<tag>``) which
manifest a tag names now: ``compile-pipeline --by-digest`` names each image by that digest, and the container
check refuses a pipeline whose digests are not the registry's. Registries that want a token (ghcr.io, Docker Hub)
get the anonymous one their ``WWW-Authenticate`` challenge offers; give ``REGISTRY_USERNAME`` and
``REGISTRY_PASSWORD`` for a private one.

``LocalRegistry`` runs Debian's ``docker-registry`` (the CNCF distribution registry, 2.8) on 127.0.0.1 with its
storage in a folder: where no registry is reachable (this kind of machine), the images are pushed there and the
pipeline names them by digest, as it would name ghcr.io's.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from image_emotion.errors import ImageEmotionError
from image_emotion.files import write_text_atomic

MANIFEST_TYPES = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))  # fmt: skip
STATE_FILE = "registry.json"
DEFAULT_PORT = 5001  # the local registry's port on 127.0.0.1
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


class RegistryError(ImageEmotionError):
    """A registry that cannot be reached, or that lacks an image the pipeline names."""


def split_reference(reference: str) -> tuple[str, str, str]:
    """``host[:port]/name:tag`` or ``host/name@sha256:…`` -> (host, name, tag or digest)."""
    match = re.fullmatch(r"([^/]+)/(.+?)(?::([\w][\w.-]{0,127})|@(sha256:[0-9a-f]{64}))", reference)
    if not match or ("." not in match[1] and ":" not in match[1] and match[1] != "localhost"):
        raise RegistryError(f"{reference!r}: not an image reference with a registry host (host/name:tag)")
    return match[1], match[2], match[3] or match[4]


def on_loopback(host: str) -> bool:
    """Whether a registry ``host[:port]`` is this machine's: a loopback address, or a ``*.localhost`` name (which
    resolves to loopback, RFC 6761: k3d's registries are named so). Such a registry speaks plain http."""
    name = "[::1]" if host.startswith("[::1]") else host.split(":")[0]
    return name in LOOPBACK or name.endswith(".localhost")


def _scheme(host: str) -> str:
    return "http" if on_loopback(host) else "https"


def _token(challenge: str) -> str | None:
    """An anonymous (or REGISTRY_USERNAME/PASSWORD) bearer token for a ``WWW-Authenticate: Bearer`` challenge."""
    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    if not challenge.lower().startswith("bearer") or "realm" not in fields:
        return None
    query = urllib.parse.urlencode({k: v for k, v in fields.items() if k in ("service", "scope")})
    request = urllib.request.Request(f"{fields['realm']}?{query}")
    user, password = os.environ.get("REGISTRY_USERNAME"), os.environ.get("REGISTRY_PASSWORD")
    if user and password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    return body.get("token") or body.get("access_token")


def manifest_digest(reference: str, seconds: float = 30) -> str:
    """The ``sha256:…`` digest of the manifest ``reference`` (``host/name:tag``) names in its registry now; a
    ``RegistryError`` in one line when the registry cannot be reached or has no such tag."""
    host, name, tag = split_reference(reference)
    url = f"{_scheme(host)}://{host}/v2/{name}/manifests/{tag}"
    headers = {"Accept": MANIFEST_TYPES}
    for _attempt in range(2):
        request = urllib.request.Request(url, method="HEAD", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=seconds) as response:
                digest = response.headers.get("Docker-Content-Digest", "")
                if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
                    raise RegistryError(f"{host} answered {reference} without a manifest digest; is it a registry?")
                return digest
        except urllib.error.HTTPError as exc:
            if exc.code == 401 and "Authorization" not in headers:
                token = _token(exc.headers.get("WWW-Authenticate", ""))
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                    continue
            if exc.code == 404:
                raise RegistryError(
                    f"{reference} is not in its registry; build and push it first (`image-emotion build-images "
                    f"--registry {host}/{name.rsplit('/', 1)[0]} --push`)"
                ) from None
            raise RegistryError(f"{host} answered {exc.code} {exc.reason} for {reference}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryError(
                f"registry {host} unreachable ({reason}); start it (`image-emotion registry start`) or check the "
                "registry name"
            ) from None
    raise RegistryError(f"{host} refused the token it offered for {reference}; set REGISTRY_USERNAME/PASSWORD")


@dataclass(frozen=True)
class RegistryState:
    """A started local registry: its address (``127.0.0.1:<port>``), storage, and pid."""

    address: str
    storage: str
    pid: int


def _answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as response:
            return response.status == 200 and "registry/2.0" in response.headers.get(
                "Docker-Distribution-Api-Version", ""
            )
    except (urllib.error.URLError, OSError):
        return False


class LocalRegistry:
    """Debian's ``docker-registry`` on 127.0.0.1:``port``, its blobs under ``directory/storage``; started in the
    background (``start``) and found again by its state file (``directory/registry.json``)."""

    def __init__(self, directory: Path, port: int = DEFAULT_PORT) -> None:
        self.directory, self.port = Path(directory), port

    @property
    def state_file(self) -> Path:
        return self.directory / STATE_FILE

    def running(self) -> RegistryState | None:
        """The state of a registry this folder started, if it still answers as a registry."""
        if not self.state_file.is_file():
            return None
        state = RegistryState(**json.loads(self.state_file.read_text()))
        return state if _answers(state.address) else None

    def start(self, seconds: float = 30) -> RegistryState:
        running = self.running()
        if running:
            return running
        program = shutil.which("docker-registry")
        if not program:
            raise RegistryError(
                "docker-registry not found; install Debian's package (`apt-get install docker-registry`) or push "
                "to a registry you have (--registry)"
            )
        address = f"127.0.0.1:{self.port}"
        if _answers(address):
            raise RegistryError(f"{address} already serves a registry this folder did not start; pick --port")
        storage = self.directory / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = self.directory / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {storage.resolve()}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}\n"
        )
        log = open(self.directory / "registry.log", "ab")  # noqa: SIM115 - the child keeps it open
        process = subprocess.Popen(
            [program, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + seconds
        while not _answers(address):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                tail = (self.directory / "registry.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise RegistryError(f"docker-registry did not start on {address}: {' '.join(tail) or 'no output'}")
            time.sleep(0.2)
        state = RegistryState(address, str(storage.resolve()), process.pid)
        write_text_atomic(self.state_file, json.dumps(asdict(state), indent=2))
        return state

    def stop(self) -> bool:
        """Stop the registry this folder started (its storage stays); whether one was running."""
        if not self.state_file.is_file():
            return False
        state = RegistryState(**json.loads(self.state_file.read_text()))
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, 15)
        self.state_file.unlink()
        return True
