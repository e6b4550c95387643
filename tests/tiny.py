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


def tiny_retrieval_model(work: Path, num_images: int = 16, size: int = 64) -> tuple[Path, Path, list[Path], list[int]]:
    """(model path, index dir, image paths, labels) under ``work``: a random-init sentiment-vector net and the exact
    index of ``num_images`` synthetic images, built the way the ``retrieve`` stage does (ids = paths, labels =
    true class ids), independently of the predictor."""
    import torch

    from image_emotion.config import SyntheticConfig
    from image_emotion.data.datasets import load_dataset
    from image_emotion.data.emotions import MIKELS8
    from image_emotion.data.images import load_image
    from image_emotion.data.synthetic import generate
    from image_emotion.data.torch_data import preprocess
    from image_emotion.models.metric import SentimentVectorNet, save_metric_model
    from image_emotion.retrieval import EmbeddingIndex
    from image_emotion.training.metric import embed

    root = generate(work / "syn", SyntheticConfig.one_set(num_images=num_images, image_size=size, seed=5))
    manifest = load_dataset("synthetic", root).manifest
    paths = [root / p for p in manifest["path"]]
    labels = [MIKELS8.index(x) for x in manifest["label"]]
    torch.manual_seed(0)
    net = SentimentVectorNet("efficientnet_lite0", weights=None, num_classes=8, embedding_dim=16).eval()
    model_path = work / "models/metric/model.pt"
    extra = {
        "label_set": "mikels8",
        "dataset": "synthetic",
        "image_size": size,
        "retrieval_feature": "sentiment",
        "objective": {"omega": 0.7, "loss": "sentiment"},
    }
    save_metric_model(model_path, net, extra=extra)
    images = torch.stack([preprocess(load_image(p), size, net.image_mean, net.image_std) for p in paths])
    vectors = embed(net, images, batch_size=16)["sentiment"]
    index_dir = EmbeddingIndex(vectors, [str(p) for p in paths], labels, kind="exact").save(work / "models/retrieval")
    return model_path, index_dir, paths, labels


def tiny_generative_model(out: Path, emotion_models: tuple[str, ...] = ("mikels8", "binary")) -> Path:
    """A random-init generative model (CLIP-style encoder, 1-layer BART, 32 px) saved at ``out``, answering
    ``emotion_models``, recorded as trained on the synthetic set."""
    from image_emotion.config import GenerativeConfig
    from image_emotion.models.generative import save_generative_model
    from image_emotion.training.generative import new_model

    cfg = GenerativeConfig(
        encoder="clip", encoder_weights=None, image_size=32, d_model=32, layers=1, heads=2, mapping_hidden=32,
        prefix_length=2,
    )  # fmt: skip
    save_generative_model(out, new_model(cfg, seed=0), {"emotion_models": list(emotion_models), "dataset": "synthetic"})
    return out
