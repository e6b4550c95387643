"""A tiny configuration of the whole pipeline (seconds on CPU) for tests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import yaml

from image_emotion.config import Config, load_config
from image_emotion.files import load_checkpoint

REPO = Path(__file__).resolve().parents[1]

TINY_OVERRIDES = [
    "synthetic.sets={objects: {num_images: 16, seed: 2}, regions: {num_images: 32, seed: 3}, "
    "main: {num_images: 48, seed: 0}, small: {num_images: 40, seed: 1}, "
    "ekman: {num_images: 36, seed: 4, label_set: ekman6}}",
    "synthetic.image_size=96",
    "pretrain.epochs=1",
    "detector.min_size=96",
    "detector.max_size=96",
    "detector.fpn_channels=32",
    "detector.representation_size=64",
    "detector.top_k=4",
    "finetune.epochs=2",
    "finetune.max_images=16",
    "finetune.warmup_steps=2",
    "extract.shard_size=16",
    "prepare.split={train: 0.6, val: 0.2, test: 0.2}",  # a validation image of every class (λ* is chosen there)
    "classifier.lambdas=[0.0, 0.5, 1.0]",
    "classifier.epochs=10",
    "classifier.hidden=32",
    "transfer.head.epochs=5",
    "evaluate.num_overlays=4",
    "metric.image_size=48",
    "metric.embedding_dim=16",
    "metric.epochs=2",
    "metric.batch_size=16",
    "metric.min_per_class=1",
    "retrieve.k=3",
    "retrieve.grid_queries=2",
    "generative.image_size=48",
    "generative.d_model=16",
    "generative.layers=1",
    "generative.heads=2",
    "generative.mapping_hidden=32",
    "generative.prefix_length=2",
    "generative.epochs=3",
    "generative.batch_size=16",
    "generative.low_resource_shots=[1, 2]",
    "generative.low_resource_steps=4",
    "device=cpu",
]


def tiny_config(**extra: object) -> Config:
    """params.yaml with the tiny overrides (and ``extra`` as more ``key=value``)."""
    return load_config(REPO / "params.yaml", [*TINY_OVERRIDES, *(f"{k}={v}" for k, v in extra.items())])


def write_tiny_params(path: Path) -> Path:
    """Write a params.yaml for a tiny project at ``path``."""
    path.write_text(yaml.safe_dump(tiny_config().to_dict(), sort_keys=False))
    return path


def wait_for_checkpoint(path: Path, proc: subprocess.Popen, epoch: int = 1, timeout: float = 240) -> None:
    """Wait until training in ``proc`` has checkpointed ``epoch`` at ``path``; fail if it ended before that."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        state = load_checkpoint(path) if path.exists() else None
        if state and state["epoch"] >= epoch:
            break
        time.sleep(0.1)
    assert proc.poll() is None, f"training ended before it could be interrupted after epoch {epoch}"


def detector_inputs(root: Path, prepared: Path, objects: Path) -> Config:
    """A tiny detector fine-tuning's inputs under ``root``: ``params.yaml``, the synthetic regions set drawn and
    prepared at ``prepared``, and an untrained object detector saved at ``objects`` (what a test resumes is the
    fine-tuning). Returns the config, its data root pointing at the drawn set."""
    import torch

    from image_emotion.models.region_detector import RegionDetector, save_detector
    from image_emotion.stages import make_synthetic, prepare

    params = write_tiny_params(root / "params.yaml")
    config = load_config(params, [f"data.root={root / 'synthetic' / 'regions'}"])
    make_synthetic.run(config, make_synthetic.MakeSyntheticPaths(root / "synthetic"))
    prepare.run(config, prepare.PreparePaths(prepared, prepared.parent / "prepare.json"))
    torch.manual_seed(0)
    save_detector(RegionDetector(config.detector), objects)
    return config
