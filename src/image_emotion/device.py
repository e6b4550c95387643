"""Pick the compute device: CUDA when there is one (``device: auto``), else the CPU; deterministic kernels on both."""

from __future__ import annotations

import os

import torch

from image_emotion.errors import ConfigError


def use_deterministic_kernels() -> None:
    """Torch's deterministic algorithms wherever it has them (a warning where it has none), cuDNN's autotuner off
    and cuBLAS's fixed workspace, so a run repeats on the same machine and thread count. Different CPUs or thread
    counts still sum in other orders: the residual variation the README's cross-machine figures state."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any CUDA work
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cpu``; ``cuda`` (an error when no GPU is visible). Every stage
    starts here, so it also turns on ``use_deterministic_kernels``."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no GPU is visible; set device: auto or cpu")
    use_deterministic_kernels()
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)
