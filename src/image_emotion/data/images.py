"""Safe image decoding: every image the system reads goes through ``load_image``.

Handles EXIF orientation and converts every mode (1, L, LA, P, RGBA, CMYK, I;16, I, F) to 8-bit RGB;
rejects empty, non-image, truncated and over-large files (decompression bombs) with ``ImageDecodeError``,
whose one-line message names the file and the fix.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from image_emotion.config import ImagesConfig
from image_emotion.errors import ImageDecodeError

DEFAULT_MAX_PIXELS = ImagesConfig().max_pixels
"""Images above this many pixels are refused (a 50 MP photo decodes to ~150 MB of RGB)."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def is_image_name(path: str | Path) -> bool:
    """True when the file name has an image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparent pixels are composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=1.0))
            arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        else:
            arr = arr / hi * 255.0
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``path`` fully into an upright 8-bit RGB image, or raise ``ImageDecodeError``."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found; check the path in the manifest or dataset root") from None
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read ({exc.strerror}); check its permissions") from None
    if size == 0:
        raise ImageDecodeError(path, "empty file (0 bytes); re-copy or delete it")
    return _decode(path, path, max_pixels)


def load_image_bytes(data: bytes, name: str = "<image bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """``load_image`` for encoded bytes (an upload, a base64 request); ``name`` appears in errors."""
    if not data:
        raise ImageDecodeError(name, "empty image (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source, name: str | Path, max_pixels: int) -> Image.Image:
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
                img.load()
                upright = ImageOps.exif_transpose(img)
                return _to_rgb(upright).copy()
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
