"""``image-emotion demo``: a small web page on loopback over the same inference functions as the CLI.

Drop (or choose) an image: the page shows the emotion distribution as a bar chart (``predict``), the image with
its emotional regions drawn (the overlay ``predict --overlay`` writes), its nearest images in the retrieval
model's index (``retrieve``) and the generated label in every emotion model the generative model answers
(``describe``). Each model is chosen by ``inference.models.resolve``'s rule (the registry's champion, else the
files ``dvc repro`` writes); a model that is missing leaves its part of the page with the reason. An upload is
checked against the ``serving`` limits (bytes, then the pixels its header states) before it is decoded, and a bad
file is answered with one line naming it and the fix. The page loads nothing from the network.

Routes: ``GET /`` the page; ``POST /analyze`` (the file's bytes as the body, its name in ``X-File-Name``) ->
JSON, an ``{"error": ...}`` with HTTP 400 (bad image) or 413 (over a limit); ``GET /health``.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from image_emotion.config import ServingConfig
from image_emotion.errors import ImageEmotionError
from image_emotion.inference import DEMO_PORT
from image_emotion.inference.models import Resolved

KINDS = ("emotion", "retrieval", "generative")
THUMBNAIL = 96  # px, the nearest images' side


@dataclass
class DemoModels:
    """The models that answer (kind -> ``Resolved``) and, for the missing ones, why (kind -> reason)."""

    resolved: dict[str, Resolved] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one request at a time through the models

    @classmethod
    def load(cls, params: Path, batch_size: int = 8) -> DemoModels:
        """Each kind by ``models.resolve``'s rule; a kind without a model is recorded as missing."""
        from image_emotion.inference import models

        out = cls()
        for kind in KINDS:
            try:
                out.resolved[kind] = models.resolve(kind, params=params, batch_size=batch_size)
            except ImageEmotionError as exc:
                out.missing[kind] = str(exc)
        return out

    def describe(self) -> dict[str, Any]:
        """Which model answers each part (its source and warning), or why none does."""
        return {kind: {"source": r.source, "warning": r.warning} for kind, r in self.resolved.items()} | {
            kind: {"missing": why} for kind, why in self.missing.items()
        }


def _png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def decode_upload(data: bytes, name: str, limits: ServingConfig) -> Image.Image:
    """An uploaded file decoded (RGB), after the ``serving`` limits are checked on its size and on the pixels its
    header states; ``ImageEmotionError`` naming the file (or the limit) and the fix otherwise."""
    from image_emotion.data.images import image_size_of_bytes, load_image_bytes

    if len(data) > limits.max_image_bytes:
        raise UploadTooLarge(
            f"{name}: {len(data)} bytes, over serving.max_image_bytes ({limits.max_image_bytes}); send a smaller "
            "file or raise the limit in params.yaml"
        )
    width, height = image_size_of_bytes(data, name)
    if width * height > limits.max_image_pixels:
        raise UploadTooLarge(
            f"{name}: {width}x{height} pixels, over serving.max_image_pixels ({limits.max_image_pixels}); "
            "downscale it or raise the limit in params.yaml"
        )
    return load_image_bytes(data, name, max_pixels=limits.max_image_pixels)


class UploadTooLarge(ImageEmotionError):
    """An upload over a ``serving`` limit (HTTP 413)."""


def _thumbnail(path: str) -> str | None:
    """A neighbour's picture as a PNG data URI, when its file is on this machine."""
    from image_emotion.data.images import load_image

    try:
        image = load_image(path)
    except ImageEmotionError:
        return None
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return _png_data_uri(image)


def analyze(image: Image.Image, models: DemoModels, k: int = 5) -> dict[str, Any]:
    """Every part of the page for one decoded image: ``emotion`` (the prediction's distribution, label and
    regions, and the overlay as a PNG data URI), ``neighbours`` (rank, label, distance, a thumbnail where the
    file is here), ``generated`` (one entry an emotion model), each ``None`` when its model is missing; and
    ``models`` (which model answered each part)."""
    from image_emotion.figures import region_overlay
    from image_emotion.inference.describe import describe
    from image_emotion.inference.predict import predict
    from image_emotion.inference.retrieve import retrieve

    out: dict[str, Any] = {"models": models.describe(), "emotion": None, "neighbours": None, "generated": None}
    with models.lock:
        if "emotion" in models.resolved:
            (p,) = predict([image], models.resolved["emotion"].predictor)
            caption = f"{p.label}: probability {p.confidence:.2f} ({p.polarity or 'no polarity'})"
            out["emotion"] = {**p.to_dict(), "overlay": _png_data_uri(region_overlay(image, p.regions, caption))}
        if "retrieval" in models.resolved:
            (answer,) = retrieve([image], models.resolved["retrieval"].predictor, k)
            out["neighbours"] = {
                "label": answer.label,
                "items": [{**vars(n), "thumbnail": _thumbnail(n.id)} for n in answer.neighbours],
            }
        if "generative" in models.resolved:
            (descriptions,) = describe([image], models.resolved["generative"].predictor)
            out["generated"] = [d.to_dict() for d in descriptions]
    return out


def page() -> bytes:
    """The demo page (``demo_page.html``: HTML, CSS and JavaScript in one file, nothing fetched elsewhere)."""
    return resources.files("image_emotion.inference").joinpath("demo_page.html").read_bytes()


def handler(models: DemoModels, limits: ServingConfig, k: int) -> type[BaseHTTPRequestHandler]:
    """The request handler of a demo server answering with ``models`` within ``limits``."""

    class DemoHandler(BaseHTTPRequestHandler):
        server_version = "image-emotion-demo"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the terminal shows the address once

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def do_GET(self) -> None:
            if self.path in ("/", "/index.html"):
                self._send(200, page(), "text/html; charset=utf-8")
            elif self.path == "/health":
                self._json(200, {"models": models.describe()})
            else:
                self._json(404, {"error": f"{self.path}: no such page; open /"})

        def do_POST(self) -> None:
            if self.path != "/analyze":
                self._json(404, {"error": f"{self.path}: no such endpoint; POST the image to /analyze"})
                return
            name = urllib.parse.unquote(self.headers.get("X-File-Name", "upload")) or "upload"
            length = int(self.headers.get("Content-Length") or 0)
            try:
                if length > limits.max_image_bytes:  # refused before the body is read
                    self.close_connection = True
                    raise UploadTooLarge(
                        f"{name}: {length} bytes, over serving.max_image_bytes ({limits.max_image_bytes}); send "
                        "a smaller file or raise the limit in params.yaml"
                    )
                image = decode_upload(self.rfile.read(length), name, limits)
            except UploadTooLarge as exc:
                self._json(413, {"error": str(exc)})
                return
            except ImageEmotionError as exc:
                self._json(400, {"error": str(exc)})
                return
            self._json(200, {"file": name, **analyze(image, models, k)})

    return DemoHandler


def serve(models: DemoModels, limits: ServingConfig, port: int = DEMO_PORT, k: int = 5) -> ThreadingHTTPServer:
    """A demo server on 127.0.0.1:``port`` (0: any free port), not yet serving (call ``serve_forever``)."""
    return ThreadingHTTPServer(("127.0.0.1", port), handler(models, limits, k))
