"""A tiny configuration of the whole pipeline (seconds on CPU) for tests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import yaml

from image_emotion.config import Config, load_config
from image_emotion.files import load_checkpoint
from image_emotion.smoke import SMOKE_OVERRIDES

REPO = Path(__file__).resolve().parents[1]

TINY_OVERRIDES = SMOKE_OVERRIDES  # one source: the container check runs the same tiny pipeline


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
