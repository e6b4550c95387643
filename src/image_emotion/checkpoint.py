"""Checkpoints written atomically and read back with a clear error: training resumes, never half-loads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from image_emotion.errors import ImageEmotionError
from image_emotion.io import atomic_path


class CheckpointError(ImageEmotionError):
    """A checkpoint file that exists but cannot be read."""


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able ``parts`` (config, data identity): a checkpoint resumes only if it matches."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save(state)`` to ``path`` atomically (a crash mid-write leaves the previous checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The state saved at ``path``, ``None`` when there is none; a corrupt file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise CheckpointError(
            f"{path}: checkpoint cannot be read ({type(exc).__name__}); delete it to start this stage afresh"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint written by image-emotion; delete it to start afresh")
    return state
