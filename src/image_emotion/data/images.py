"""Safe image decoding: every image the system reads goes through ``load_image``.

Handles EXIF orientation and converts every mode (1, L, LA, P, RGBA, CMYK, I;16, I, F) to 8-bit RGB;
rejects empty, non-image, truncated and over-large files (decompression bombs) with ``ImageDecodeError``,
whose one-line message names the file and the fix.

Given ``fit`` (the sides a model resizes its input to), an image larger than the model reads is reduced while
it is decoded: a JPEG decodes at 1/2, 1/4 or 1/8 scale (PIL's ``draft``), any other format is reduced by an
integer factor right after decoding (``Image.reduce``), never below what the model reads, so the model's own
resize still makes its input. ``info["original_size"]`` keeps the file's ``(width, height)`` (upright).
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from image_emotion.config import ImagesConfig
from image_emotion.errors import ImageDecodeError

DEFAULT_MAX_PIXELS = ImagesConfig().max_pixels
"""Images above this many pixels are refused (a 50 MP photo decodes to ~150 MB of RGB)."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def is_image_name(path: str | Path) -> bool:
    """True when the file name has an image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


class Fit(NamedTuple):
    """The input a model reads: the shorter side resized to ``min_side``, unless the longer would then pass
    ``max_side`` (torchvision's detection transform); ``max_side=None`` for a model that reads at least
    ``min_side`` × ``min_side`` (a square resize)."""

    min_side: int
    max_side: int | None = None

    def scale(self, width: int, height: int) -> float:
        """The factor the model resizes a ``width`` × ``height`` image by (below 1: it downscales)."""
        s = self.min_side / min(width, height)
        return min(s, self.max_side / max(width, height)) if self.max_side else s


ROWS_AT_ONCE = 256  # rows of a 16-bit or float image converted to 8 bits at a time (bounded extra memory)


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float single-channel image as 8-bit ``L``, scaled as ``_to_rgb`` documents, converted
    ``ROWS_AT_ONCE`` rows at a time (a float64 copy of a 49-megapixel image would be 392 MB)."""
    arr = np.asarray(img)
    if img.mode == "F":
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=1.0))
        span = max(hi - lo, 1e-12)
    else:
        lo, span = 0.0, 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    out = np.empty(arr.shape, dtype=np.uint8)
    for top in range(0, arr.shape[0], ROWS_AT_ONCE):
        rows = arr[top : top + ROWS_AT_ONCE].astype(np.float64)  # one copy, then in place
        rows -= lo
        rows *= 255.0 / span
        rows += 0.5
        out[top : top + ROWS_AT_ONCE] = np.clip(rows, 0, 255, out=rows).astype(np.uint8)
    return Image.fromarray(out)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparent pixels are composited on white; 16-bit and 32-bit
    integers are scaled from 0..65535 (0..255 when no value passes 255), floats from their min..max."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = _to_8bit(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, fit: Fit | None = None) -> Image.Image:
    """Decode ``path`` into an upright 8-bit RGB image (reduced towards ``fit`` when given), or raise
    ``ImageDecodeError``."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found; check the path in the manifest or dataset root") from None
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read ({exc.strerror}); check its permissions") from None
    if size == 0:
        raise ImageDecodeError(path, "empty file (0 bytes); re-copy or delete it")
    return _decode(path, path, max_pixels, fit)


def load_image_bytes(
    data: bytes, name: str = "<image bytes>", max_pixels: int = DEFAULT_MAX_PIXELS, fit: Fit | None = None
) -> Image.Image:
    """``load_image`` for encoded bytes (an upload, a base64 request); ``name`` appears in errors."""
    if not data:
        raise ImageDecodeError(name, "empty image (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels, fit)


def image_size_of_bytes(data: bytes, name: str = "<image bytes>") -> tuple[int, int]:
    """``(width, height)`` from an encoded image's header alone (nothing decoded), or ``ImageDecodeError``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.size
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(name, f"decompression bomb refused ({exc}); downscale it") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            name, "not an image PIL can decode (JPEG, PNG, BMP, GIF, TIFF, WebP); replace or remove it"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(name, f"corrupt image header ({exc}); re-copy or remove it") from None


def _reduced(img: Image.Image, target: tuple[int, int]) -> Image.Image:
    """``img`` shrunk by the largest integer factor that keeps both sides at least ``target`` (modes that
    ``Image.reduce`` cannot take are converted first: 1 and P to RGB(A), 16-bit to 8-bit)."""
    factor = min(img.width // max(target[0], 1), img.height // max(target[1], 1))
    if factor < 2:
        return img
    if img.mode in ("1", "P"):
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode.startswith("I;16"):
        img = _to_8bit(img)
    return img.reduce(factor)


def _decode(source, name: str | Path, max_pixels: int, fit: Fit | None = None) -> Image.Image:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageDecodeError(name, "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; unset it so truncation is caught")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageDecodeError(
                        name,
                        f"{w}x{h} = {w * h} pixels is over the limit of {max_pixels} "
                        "(images.max_pixels in params.yaml); downscale it or raise the limit",
                    )
                scale = fit.scale(w, h) if fit else 1.0
                target = (math.ceil(w * scale), math.ceil(h * scale))
                if scale < 0.5 and img.format == "JPEG":
                    img.draft("RGB", target)  # decodes at 1/2, 1/4 or 1/8 scale, never below target
                img.load()
                smaller = _reduced(img, target) if scale < 0.5 else img
                turned = smaller.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)  # a quarter turn
                upright = ImageOps.exif_transpose(smaller)
                rgb = _to_rgb(upright).copy()
                rgb.info["original_size"] = (h, w) if turned else (w, h)
                return rgb
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(
            name, f"decompression bomb refused ({exc}); downscale it or raise images.max_pixels"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            name, "not an image PIL can decode (JPEG, PNG, BMP, GIF, TIFF, WebP); replace or remove it"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageDecodeError(name, f"corrupt or truncated image ({reason}); re-copy or remove it") from None
