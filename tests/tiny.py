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


def job_launcher_inputs(tmp_path: Path, monkeypatch, namespace: str | None) -> tuple[Path, Path]:
    """What ``finetune_detector_job_op`` sees in a launcher pod, under ``tmp_path``: the run's environment, the work
    volume, the pod's namespace file (holding ``namespace``; absent when None), a prepared dataset and the object
    detector's file. Returns (the dataset artifact's folder, the objects artifact's folder)."""
    from image_emotion.kubeflow import cluster

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.mlops:5000")
    monkeypatch.setenv(cluster.RUN_ID_ENV, "run-9")
    monkeypatch.setenv("IMAGE_EMOTION_PIPELINE_RUN", "run-9")
    monkeypatch.setattr(cluster, "WORK_MOUNT", str(tmp_path / "work"))
    monkeypatch.setattr(cluster, "NAMESPACE_FILE", str(tmp_path / "namespace"))
    if namespace is not None:
        (tmp_path / "namespace").write_text(f"{namespace}\n")
    dataset, objects = tmp_path / "dataset", tmp_path / "objects"
    (dataset / "prepared").mkdir(parents=True)
    (dataset / "prepared/manifest.csv").write_text("path\n")
    objects.mkdir()
    (objects / "detector.pt").write_bytes(b"objects")
    return dataset, objects
