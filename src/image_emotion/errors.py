"""Errors the user can act on. Each message is one line that names the file or setting and the fix."""

from __future__ import annotations


class ImageEmotionError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits with status 2."""


class ConfigError(ImageEmotionError):
    """A bad value in params.yaml, on the command line, or in a label set."""


class DatasetError(ImageEmotionError):
    """A dataset directory, manifest or label file that cannot be read as documented."""


class ImageDecodeError(DatasetError):
    """An image file that cannot be decoded safely (truncated, not an image, too large, empty)."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")
