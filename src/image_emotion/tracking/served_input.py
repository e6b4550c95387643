"""Decoding the ``image`` column the served models take: each cell base64 text of an image file (a ``data:`` URI
too), raw bytes, or — in process only, never over HTTP — a path to an image file.

A bad cell raises ``BadImageInput`` naming its row and the reason: an MLflow ``INVALID_PARAMETER_VALUE`` (so
``mlflow models serve`` answers HTTP 400 with that message) that is also a ``ValueError``. One image may hold at
most ``MAX_IMAGE_BYTES`` encoded bytes; its pixels are bounded by ``images.max_pixels`` (decompression bombs).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from PIL import Image

from image_emotion.data.images import DEFAULT_MAX_PIXELS, load_image_bytes
from image_emotion.errors import ConfigError, ImageDecodeError

MAX_IMAGE_BYTES = 32 * 2**20  # one encoded image file (a 24-megapixel JPEG is ~10 MB)
COLUMN = "image"


class BadImageInput(MlflowException, ValueError):
    """A cell of the ``image`` column that is not an image the model can read (HTTP 400 when served)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class BadServedParameter(MlflowException, ConfigError):
    """A request parameter the model cannot honour (HTTP 400 when served; a one-line error in the CLI)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def _raw_bytes(cell: Any, row: int, allow_paths: bool) -> bytes:
    if isinstance(cell, bytes | bytearray):
        return bytes(cell)
    if not isinstance(cell, str):
        raise BadImageInput(f"row {row}: '{COLUMN}' must be base64 text of an image file, got {type(cell).__name__}")
    text = cell.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise BadImageInput(
            f"row {row}: {len(text) / 2**20:.0f} MB of base64 is over the {MAX_IMAGE_BYTES // 2**20} MB limit "
            "of one image; downscale it"
        )
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        if allow_paths and len(text) < 4096 and Path(text).is_file():
            return Path(text).read_bytes()
        raise BadImageInput(f"row {row}: '{COLUMN}' is not valid base64 (encode the image file's bytes)") from None


def decode_image_cell(
    cell: Any, row: int, allow_paths: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """One cell as an RGB image, or ``BadImageInput`` naming the row."""
    raw = _raw_bytes(cell, row, allow_paths)
    if len(raw) > MAX_IMAGE_BYTES:
        raise BadImageInput(f"row {row}: {len(raw) / 2**20:.0f} MB is over the {MAX_IMAGE_BYTES // 2**20} MB limit")
    try:
        return load_image_bytes(raw, name=f"row {row}", max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise BadImageInput(str(exc)) from None


def decode_image_column(frame: pd.DataFrame, allow_paths: bool = False) -> list[Image.Image]:
    """Every cell of ``frame['image']`` decoded; a missing column or a bad cell is a ``BadImageInput``."""
    if not isinstance(frame, pd.DataFrame) or COLUMN not in frame.columns:
        found = list(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise BadImageInput(f"input needs a column '{COLUMN}' of base64-encoded image files; got {found}")
    return [decode_image_cell(cell, i, allow_paths) for i, cell in enumerate(frame[COLUMN])]
