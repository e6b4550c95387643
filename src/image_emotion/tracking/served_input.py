"""The requests the served models take, checked against their limits before anything is decoded.

The ``image`` column: each cell base64 text of an image file (a ``data:`` URI too), raw bytes, or — in process
only, never over HTTP — a path to an image file. ``request_images`` checks a whole request against
``ServingConfig`` (rows, encoded bytes per image and per request, pixels per image and per request, read from the
images' headers alone); ``decoded_batches`` then decodes it one batch at a time, each image reduced while it is
decoded to what the model reads (``data/images.Fit``), so a request costs about one full-size image and one
batch of model-sized ones whatever its rows.

A bad cell raises ``BadImageInput`` naming its row and the reason, a request over a limit ``RequestTooLarge``
naming the limit (its ``serving.*`` key), a bad parameter ``BadServedParameter``: MLflow errors with code
``INVALID_PARAMETER_VALUE``, so ``mlflow models serve`` answers HTTP 400 with the message; also ``ValueError`` /
``ConfigError`` for the CLI. ``Deadline`` stops a request between batches once the server's own timeout
(``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``, after which it has already answered 504) has passed, so abandoned
work does not go on.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from PIL import Image

from image_emotion.config import ServingConfig
from image_emotion.data.images import Fit, image_size_of_bytes, load_image_bytes
from image_emotion.errors import ConfigError, ImageDecodeError

COLUMN = "image"
TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"  # set by `mlflow models serve` (seconds)


class BadImageInput(MlflowException, ValueError):
    """A cell of the ``image`` column that is not an image the model can read (HTTP 400 when served)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class BadServedParameter(MlflowException, ConfigError):
    """A request parameter the model cannot honour (HTTP 400 when served; a one-line error in the CLI)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class RequestTooLarge(BadServedParameter):
    """A request over one of the model's ``serving`` limits (HTTP 400 naming the limit)."""


def limits_of(model_config: dict[str, Any] | None) -> ServingConfig:
    """The limits a model was logged with (its ``model_config``); a model logged before limits existed gets the
    defaults. Unknown keys are errors, as everywhere in the configuration."""
    return ServingConfig(**(model_config or {}))


def _over(what: str, value: int, key: str, limit: int, unit: str, fix: str) -> RequestTooLarge:
    return RequestTooLarge(f"{what} {value:,} {unit}: over serving.{key} = {limit:,}; {fix}")


def _raw_bytes(cell: Any, row: int, allow_paths: bool, limits: ServingConfig) -> bytes:
    if isinstance(cell, bytes | bytearray):
        raw = bytes(cell)
    elif not isinstance(cell, str):
        raise BadImageInput(f"row {row}: '{COLUMN}' must be base64 text of an image file, got {type(cell).__name__}")
    else:
        text = cell.strip()
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        if len(text) > limits.max_image_bytes * 4 // 3 + 4:
            raise _over(f"row {row}:", len(text) * 3 // 4, "max_image_bytes", limits.max_image_bytes, "bytes",
                        "downscale the image")  # fmt: skip
        try:
            raw = base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error):
            if allow_paths and len(text) < 4096 and Path(text).is_file():
                raw = Path(text).read_bytes()
            else:
                message = f"row {row}: '{COLUMN}' is not valid base64 (encode the image file's bytes)"
                raise BadImageInput(message) from None
    if len(raw) > limits.max_image_bytes:
        raise _over(f"row {row}:", len(raw), "max_image_bytes", limits.max_image_bytes, "bytes", "downscale the image")
    if not raw:
        raise BadImageInput(f"row {row}: empty image (0 bytes)")
    return raw


@dataclass(frozen=True)
class RequestImages:
    """A request's images, checked against the limits, still encoded: ``files[i]`` the bytes of row ``i``."""

    files: list[bytes]
    sizes: list[tuple[int, int]]  # (width, height) of each, from its header


def request_images(frame: Any, limits: ServingConfig, allow_paths: bool = False) -> RequestImages:
    """Check ``frame['image']`` against ``limits`` reading nothing but the images' headers; a missing column,
    a bad cell or a limit passed raises (see the module docstring)."""
    if not isinstance(frame, pd.DataFrame) or COLUMN not in frame.columns:
        found = list(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise BadImageInput(f"input needs a column '{COLUMN}' of base64-encoded image files; got {found}")
    if len(frame) > limits.max_rows:
        raise _over("the request's", len(frame), "max_rows", limits.max_rows, "rows", "send fewer rows per request")
    files, total = [], 0
    for row, cell in enumerate(frame[COLUMN]):
        files.append(_raw_bytes(cell, row, allow_paths, limits))
        total += len(files[-1])
        if total > limits.max_request_bytes:
            raise _over("the request's", total, "max_request_bytes", limits.max_request_bytes, "bytes",
                        "send fewer or smaller images per request")  # fmt: skip
    sizes, pixels = [], 0
    for row, raw in enumerate(files):
        try:
            width, height = image_size_of_bytes(raw, name=f"row {row}")
        except ImageDecodeError as exc:
            raise BadImageInput(str(exc)) from None
        if width * height > limits.max_image_pixels:
            raise _over(f"row {row}: {width}x{height} =", width * height, "max_image_pixels",
                        limits.max_image_pixels, "pixels", "downscale the image")  # fmt: skip
        pixels += width * height
        if pixels > limits.max_request_pixels:
            raise _over("the request's", pixels, "max_request_pixels", limits.max_request_pixels, "pixels",
                        "send fewer or smaller images per request")  # fmt: skip
        sizes.append((width, height))
    return RequestImages(files, sizes)


def decoded_batches(
    images: RequestImages, batch_size: int, fit: Fit | None, limits: ServingConfig
) -> Iterator[list[Image.Image]]:
    """The request's images, ``batch_size`` at a time, each decoded to RGB and reduced towards ``fit``
    (``info["original_size"]``: the file's upright size). A cell that does not decode is a ``BadImageInput``."""
    for start in range(0, len(images.files), batch_size):
        batch = []
        for row in range(start, min(start + batch_size, len(images.files))):
            try:
                batch.append(
                    load_image_bytes(images.files[row], f"row {row}", max_pixels=limits.max_image_pixels, fit=fit)
                )
            except ImageDecodeError as exc:
                raise BadImageInput(str(exc)) from None
        yield batch


def request_batches(
    frame: Any, limits: ServingConfig, batch_size: int, fit: Fit | None, allow_paths: bool = False
) -> Iterator[tuple[int, list[Image.Image]]]:
    """What every served model answers from: ``frame`` checked (``request_images``), then decoded a batch at a
    time (``decoded_batches``), each batch with the row of its first image; past the server's own timeout
    (``Deadline``) no further batch is decoded."""
    images, deadline = request_images(frame, limits, allow_paths), Deadline()
    done, total = 0, len(images.files)
    for batch in decoded_batches(images, batch_size, fit, limits):
        yield done, batch
        done += len(batch)
        if done < total:
            deadline.check(done, total)


class Deadline:
    """The server's request timeout as a deadline checked between batches (none outside ``mlflow models
    serve``, or where ``seconds`` is not given)."""

    def __init__(self, seconds: float | None = None) -> None:
        if seconds is None and os.environ.get(TIMEOUT_ENV):
            seconds = float(os.environ[TIMEOUT_ENV])
        self.seconds = seconds
        self.until = None if seconds is None else time.monotonic() + seconds

    def check(self, done: int, total: int) -> None:
        if self.until is not None and time.monotonic() > self.until:
            raise MlflowException(
                f"stopped after {done} of {total} images: past the server's {self.seconds:g} s request timeout "
                "(it has answered 504); send fewer images per request"
            )


def unique_names(names: Sequence[str], what: str, key: str, limit: int) -> list[str]:
    """``names`` without blanks, refused when one repeats or there are more than ``limit``."""
    names = [n.strip() for n in names if n and n.strip()]
    if len(names) > limit:
        raise _over("the request's", len(names), key, limit, what, f"ask for at most {limit}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BadServedParameter(f"{what} {repeated[0]!r} is asked for more than once; name each once")
    return names


def checked_k(k: Any, limits: ServingConfig) -> int:
    """The request's ``k`` as an int in ``1..serving.max_k``, else a ``BadServedParameter``."""
    whole = (
        isinstance(k, int)
        or (isinstance(k, float) and k.is_integer())
        or (isinstance(k, str) and k.strip().lstrip("-").isdigit())
    )
    if not whole or isinstance(k, bool):
        raise BadServedParameter(f"k must be a whole number, got {k!r}")
    value = int(k)
    if value < 1:
        raise BadServedParameter(f"k must be at least 1, got {value}")
    if value > limits.max_k:
        raise _over("k =", value, "max_k", limits.max_k, "neighbours", f"ask for at most {limits.max_k}")
    return value
