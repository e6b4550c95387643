"""Pick the compute device: CUDA when there is one (``device: auto``), else the CPU."""

from __future__ import annotations

import torch

from image_emotion.errors import ConfigError


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cpu``; ``cuda`` (an error when no GPU is visible)."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no GPU is visible; set device: auto or cpu")
    if preference not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {preference!r}")
    return torch.device(preference)
