"""Image references, manifest digests and the errors around them. The registry here is a small HTTP server that
answers the distribution API's manifest request as a registry does (the container check, `.ci/run`'s last step,
pushes to and reads from Debian's real docker-registry)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from image_emotion.kubeflow.container_check import ContainerCheckError, verify_pipeline_images
from image_emotion.kubeflow.images import images
from image_emotion.kubeflow.pipeline import compile_pipeline
from image_emotion.kubeflow.registry import RegistryError, manifest_digest, split_reference

DIGEST = "sha256:" + "ab" * 32


class _Registry(BaseHTTPRequestHandler):
    manifests: ClassVar[dict[str, str]] = {}  # "<name>:<tag>" -> digest (each fixture its own subclass and dict)
    token_required = False

    def do_HEAD(self):
        if self.path.startswith("/token"):
            return self.send_response(405)
        if self.token_required and self.headers.get("Authorization") != "Bearer t0k":
            self.send_response(401)
            realm = f"http://{self.headers['Host']}/token"
            self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="reg",scope="repository:x:pull"')
            return self.end_headers()
        name, _, tag = self.path.removeprefix("/v2/").partition("/manifests/")
        digest = self.manifests.get(f"{name}:{tag}")
        assert "application/vnd.oci.image.manifest.v1+json" in self.headers["Accept"]
        self.send_response(200 if digest else 404)
        if digest:
            self.send_header("Docker-Content-Digest", digest)
        self.end_headers()

    def do_GET(self):
        body = json.dumps({"token": "t0k"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def registry():
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Registry,), {"manifests": {}}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _address(server) -> str:
    return f"127.0.0.1:{server.server_address[1]}"


def test_split_reference():
    assert split_reference("127.0.0.1:5001/ns/image-emotion:0.1.0-abc-cpu") == (
        "127.0.0.1:5001", "ns/image-emotion", "0.1.0-abc-cpu"
    )  # fmt: skip
    assert split_reference(f"ghcr.io/org/x@{DIGEST}") == ("ghcr.io", "org/x", DIGEST)
    with pytest.raises(RegistryError, match="not an image reference with a registry host"):
        split_reference("image-emotion:latest")


def test_the_digest_a_registry_gives_a_tag(registry):
    registry.RequestHandlerClass.manifests["ns/image-emotion:v1-cpu"] = DIGEST
    assert manifest_digest(f"{_address(registry)}/ns/image-emotion:v1-cpu") == DIGEST
    with pytest.raises(RegistryError, match=r":v2-cpu is not in its registry; build and push it first"):
        manifest_digest(f"{_address(registry)}/ns/image-emotion:v2-cpu")


def test_a_registry_that_wants_a_token_gets_the_anonymous_one(registry):
    registry.RequestHandlerClass.token_required = True
    registry.RequestHandlerClass.manifests["x:t"] = DIGEST
    assert manifest_digest(f"{_address(registry)}/x:t") == DIGEST


def test_an_unreachable_registry_is_one_line():
    with pytest.raises(RegistryError, match=r"registry 127\.0\.0\.1:9 unreachable .*image-emotion registry start"):
        manifest_digest("127.0.0.1:9/ns/image-emotion:tag", seconds=2)


@pytest.mark.slow
def test_a_pipeline_whose_digests_are_not_the_registrys_is_refused(registry, tmp_path, repo_root):
    built = images(f"{_address(registry)}/ns", repo_root)
    pushed = {"cpu": "sha256:" + "1" * 64, "cuda": "sha256:" + "2" * 64}
    for kind, digest in pushed.items():
        registry.RequestHandlerClass.manifests[f"ns/image-emotion:{built.tag}-{kind}"] = digest
    good = compile_pipeline(tmp_path / "good.yaml", built=built.by_digest(pushed))
    assert verify_pipeline_images(good, built) == pushed
    stale = compile_pipeline(tmp_path / "stale.yaml", built=built.by_digest({**pushed, "cuda": "sha256:" + "3" * 64}))
    with pytest.raises(ContainerCheckError, match=r"stale\.yaml names .*@sha256:3{64}, but the registry's"):
        verify_pipeline_images(stale, built)
    tagged = compile_pipeline(tmp_path / "tagged.yaml", built=built)
    with pytest.raises(ContainerCheckError, match="by tag; compile it with --by-digest"):
        verify_pipeline_images(tagged, built)
