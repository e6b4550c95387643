"""A tiny configuration of the whole pipeline (seconds on CPU) for tests."""

from __future__ import annotations

from pathlib import Path

from image_emotion.config import apply_overrides, load_params

REPO = Path(__file__).resolve().parents[1]

TINY_OVERRIDES = [
    "embedded.num_images=48",
    "embedded.image_size=96",
    "detector.min_size=96",
    "detector.max_size=96",
    "detector.fpn_channels=32",
    "detector.representation_size=64",
    "detector.top_k=4",
    "finetune.epochs=2",
    "finetune.max_images=16",
    "finetune.warmup_steps=2",
    "extract.shard_size=16",
    "classifier.lambdas=[0.0, 0.5, 1.0]",
    "classifier.epochs=10",
    "classifier.hidden=32",
    "transfer.embedded={num_images: 40, seed: 1}",
    "transfer.head={epochs: 5}",
    "evaluate.num_overlays=4",
    "device=cpu",
]


def tiny_params(**extra: object) -> dict:
    """params.yaml with the tiny overrides (and ``extra`` as more ``key=value``)."""
    return apply_overrides(
        load_params(REPO / "params.yaml"), [*TINY_OVERRIDES, *(f"{k}={v}" for k, v in extra.items())]
    )


def write_tiny_params(path: Path) -> Path:
    """Write a params.yaml for a tiny project at ``path``."""
    import yaml

    path.write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    return path
