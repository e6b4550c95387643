"""Shared test set-up: no telemetry, the venv's commands on PATH, tiny dataset layouts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    """The repository root (params.yaml, dvc.yaml)."""
    return REPO


@pytest.fixture(scope="session")
def embedded_small(tmp_path_factory):
    """A small embedded dataset (64 images of 128 px) as ``(images (3, H, W) in [0, 1], boxes, labels)``."""
    import torch
    from torchvision.transforms.functional import to_tensor

    from image_emotion.data.datasets import load_dataset
    from image_emotion.data.emotions import MIKELS8
    from image_emotion.data.images import load_image
    from image_emotion.data.synthetic import SyntheticConfig, generate

    root = generate(tmp_path_factory.mktemp("emb") / "embedded", SyntheticConfig(num_images=64, image_size=128))
    df = load_dataset("embedded", root).manifest
    images = [to_tensor(load_image(root / p)) for p in df["path"]]
    boxes = [torch.tensor(b, dtype=torch.float32) for b in df["boxes"]]
    labels = torch.tensor([MIKELS8.index(x) for x in df["label"]])
    return images, boxes, labels
