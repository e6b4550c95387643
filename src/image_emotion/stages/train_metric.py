"""Stage ``train_metric`` (seed 002): the sentiment-vector network trained on the main set's train split with the
joint loss ``(1 - ω)·softmax + ω·sentiment constraint`` (params ``metric``), and the rows of the paper's Table 1.

- The model: ``models/metric/model.pt`` (``save_metric_model``; its extra state names the label set, the input
  size and the feature retrieval uses), with its validation and test accuracy and the test retrieval measures
  (test queries against the train split, the paper's FI protocol) in ``metrics/metric.json``.
- Table 1: every row of ``training.metric.table1_rows`` trained from the same initial weights with each seed
  of ``metric.ablation_seeds``; accuracy and the seven retrieval measures, mean and std over the seeds, in
  ``metrics/metric_ablation.json`` (``[]`` when there are no seeds).

With ``metric.freeze_backbone`` (the CPU default) the backbone's maps of every image are computed once and
shared by every row. Nothing of the dataset is held in memory: the images are decoded when a batch needs them
(``ImageRows``) and the maps are kept in a cache on disk under ``$TMPDIR`` for the stage's duration
(``StreamedTrunk``), read a mini-batch at a time. Every training is a nested MLflow run under the stage's run,
with its loss per epoch.

Under torchrun every rank trains on its slice of each global batch (``training/distributed.py``; each rank
computes the frozen backbone's maps of every image itself); rank 0 scores the models and writes every output.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from image_emotion.config import Config, MetricConfig
from image_emotion.data.emotions import get_label_set
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.device import pick_device
from image_emotion.errors import ConfigError
from image_emotion.files import write_json_atomic
from image_emotion.models.metric import SentimentVectorNet, save_metric_model
from image_emotion.stages.paths import TrainMetricPaths
from image_emotion.tracking import runs as tracking
from image_emotion.training import distributed
from image_emotion.training.metric import (
    RETRIEVAL_MEASURES,
    MetricObjective,
    embed,
    score,
    table1_rows,
    train_metric_net,
)
from image_emotion.training.metric_inputs import ImageRows, StreamedTrunk

MEASURES = ("accuracy", *RETRIEVAL_MEASURES)


@dataclasses.dataclass
class MetricInputs:
    """The main set as model inputs: images ``(N, 3, S, S)`` decoded when indexed, labels ``(N,)``, split rows,
    the initial network (every training starts from a copy) and, with a frozen backbone, its maps of every
    image on disk."""

    data: PreparedDataset
    images: ImageRows
    labels: torch.Tensor
    idx: dict[str, np.ndarray]
    initial: SentimentVectorNet
    trunk: StreamedTrunk | None


def load_inputs(config: Config, prepared: Path, scratch: Path, device: torch.device | None = None) -> MetricInputs:
    """The main set at ``prepared`` as model inputs on ``device`` (default: ``config.device``'s); a frozen
    backbone's maps go to a cache under ``scratch``."""
    cfg = config.metric
    data = PreparedDataset.load(prepared)
    idx = {s: data.split_rows(s) for s in ("train", "val", "test")}
    if len(idx["train"]) == 0 or len(idx["test"]) == 0:
        raise ConfigError(f"{prepared}: the metric model needs train and test images; check prepare.split")
    num_classes = len(get_label_set(data.label_set))
    torch.manual_seed(cfg.seed)
    initial = SentimentVectorNet(cfg.backbone, cfg.backbone_weights, num_classes, cfg.embedding_dim, cfg.filters).to(
        device or pick_device(config.device)
    )
    images = ImageRows(data, cfg.image_size, initial.image_mean, initial.image_std)
    trunk = StreamedTrunk(initial, images, scratch / "trunk") if cfg.freeze_backbone else None
    return MetricInputs(data, images, data.labels(), idx, initial, trunk)


def fresh_model(inputs: MetricInputs, seed: int) -> SentimentVectorNet:
    """The initial backbone (as loaded) with new layers drawn from ``seed``: every row starts from the same
    backbone, so a frozen one's cached maps are valid for all."""
    model = copy.deepcopy(inputs.initial)
    torch.manual_seed(seed)
    for module in (model.reducers, model.embed, model.classifier):
        for layer in module.modules():
            if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear):
                layer.reset_parameters()
    return model


def train_and_score(
    inputs: MetricInputs, objective: MetricObjective, feature: str, cfg: MetricConfig, seed: int, name: str
) -> tuple[SentimentVectorNet, dict[str, float], list[float]]:
    """Train a fresh model on the train split with ``objective``; its test scores (and validation accuracy); under
    torchrun no scores on ranks other than 0."""
    train = inputs.idx["train"]
    logged = {**dataclasses.asdict(objective), "seed": seed, "retrieval_feature": feature}
    with distributed.main_only(tracking.child_run(name, logged)):
        model = fresh_model(inputs, seed)
        losses = train_metric_net(
            model, inputs.images.select(train), inputs.labels[train], inputs.data.label_set, objective,
            epochs=cfg.epochs, batch_size=cfg.batch_size, min_per_class=cfg.min_per_class, lr_conv=cfg.lr_conv,
            lr_last=cfg.lr_last, momentum=cfg.momentum, freeze_backbone=cfg.freeze_backbone, seed=seed,
            trunk=inputs.trunk.subset(train) if inputs.trunk is not None else None,
        )  # fmt: skip
        if not distributed.is_main():
            return model, {}, losses
        out = embed(model, inputs.images, trunk=inputs.trunk)
        y = inputs.labels.numpy()
        classifier_trained = objective.omega < 1.0
        scores = score(out, y, inputs.idx["test"], train, feature, inputs.data.label_set, classifier_trained)
        if len(inputs.idx["val"]):
            scores["val_accuracy"] = score(
                out, y, inputs.idx["val"], train, feature, inputs.data.label_set, classifier_trained
            )["accuracy"]
        for epoch, loss in enumerate(losses):
            tracking.log_metrics({"loss": loss}, step=epoch)
        tracking.log_metrics(scores)
    return model, scores, losses


def ablation(inputs: MetricInputs, cfg: MetricConfig) -> list[dict[str, Any]]:
    """Table 1's rows, each trained with every seed of ``cfg.ablation_seeds``: mean and std of each measure."""
    rows = []
    for row in table1_rows(cfg):
        runs = [
            train_and_score(inputs, row.objective, row.feature, cfg, seed, f"table1:{row.key}:seed={seed}")[1]
            for seed in cfg.ablation_seeds
        ]
        if not distributed.is_main():
            continue
        summary: dict[str, Any] = {
            "row": row.key,
            "label": row.label,
            "feature": "SV" if row.feature == "sentiment" else "FC",
            "seeds": list(cfg.ablation_seeds),
            "backbone_frozen": cfg.freeze_backbone,  # then an SV row's classifier reads what softmax alone trains
        }
        for key in MEASURES:
            values = [r[key] for r in runs]
            summary[key] = float(np.mean(values))
            summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(summary)
    return rows


def run(config: Config, paths: TrainMetricPaths) -> dict[str, Any]:
    """The stage: the model of ``config.metric``, Table 1's rows, the outputs (rank 0's under torchrun)."""
    with distributed.session(config.device) as device, tempfile.TemporaryDirectory(prefix="trunk-") as scratch:
        return _run(config, paths, device, Path(scratch))


def _run(config: Config, paths: TrainMetricPaths, device: torch.device, scratch: Path) -> dict[str, Any]:
    cfg = config.metric
    inputs = load_inputs(config, paths.prepared, scratch, device)
    objective = MetricObjective.from_config(cfg)
    with distributed.main_only(tracking.stage_run(config, "train_metric", paths.reads)):
        model, scores, losses = train_and_score(inputs, objective, cfg.feature, cfg, cfg.seed, "model")
        rows = ablation(inputs, cfg)
        if not distributed.is_main():  # the other ranks' work ends with the trainings
            return {"rank": distributed.rank(), "first_epoch_loss": losses[0], "last_epoch_loss": losses[-1]}
        tracking.log_metrics({f"test_{k}": v for k, v in scores.items() if k in MEASURES})
    save_metric_model(
        paths.out_dir / "model.pt",
        model.cpu(),
        {
            "label_set": inputs.data.label_set,
            "dataset": inputs.data.name,
            "image_size": cfg.image_size,
            "retrieval_feature": cfg.feature,
            "objective": dataclasses.asdict(objective),
        },
    )
    metrics = {
        "dataset": inputs.data.name,
        "label_set": inputs.data.label_set,
        "backbone": cfg.backbone,
        "image_size": cfg.image_size,
        "device": str(pick_device(config.device)),
        "train_images": len(inputs.idx["train"]),
        "test_images": len(inputs.idx["test"]),
        "feature": cfg.feature,
        "objective": dataclasses.asdict(objective),
        "first_epoch_loss": losses[0],
        "last_epoch_loss": losses[-1],
        "val_accuracy": scores.get("val_accuracy"),
        **{f"test_{k}": scores[k] for k in MEASURES},
        "chance_accuracy": 1.0 / inputs.initial.num_classes,
    }
    write_json_atomic(paths.ablation, rows)
    write_json_atomic(paths.metrics, metrics)
    return metrics
