"""Stage ``transfer_cv``: from the trained model to a small dataset, one-against-all, 5-fold CV.

The target (params ``transfer``: IAPSsubset, ArtPhoto, Abstract or EmotionROI layouts, or the synthetic small
set) is prepared with stratified folds and its region features extracted by the trained detector. For each
fold k, a head whose hidden layer starts from the trained classifier's (the transfer) is trained on the other
folds with one sigmoid output per class - one-against-all: each output is a binary "this emotion vs the
rest" classifier - and an image gets the class whose classifier is most confident. Reports mean ± std
accuracy over the folds (the paper's protocol) and the per-class true-positive rate.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from image_emotion.config import Config, HeadTraining
from image_emotion.data.emotions import get_label_set
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.device import pick_device
from image_emotion.files import write_json_atomic
from image_emotion.metrics import accuracy, per_class_accuracy
from image_emotion.models.multilevel import MultiLevelHead, load_head
from image_emotion.stages.paths import TransferPaths
from image_emotion.tracking import runs as tracking
from image_emotion.training.heads import CPU, HeadData, fit, load_head_data, predict


def train_one_vs_all(
    data: HeadData, init: MultiLevelHead, dims, num_classes: int, hp: HeadTraining, device: torch.device = CPU
) -> MultiLevelHead:
    """One logistic output per class (BCE on one-vs-rest targets) over a hidden layer started from ``init``,
    trained on ``device``."""
    torch.manual_seed(hp.seed)
    dg, dl, k = dims
    head = MultiLevelHead(dg, dl, k, num_classes, mode=init.mode, hidden=init.fc1.out_features, dropout=hp.dropout)
    head.norm.load_state_dict(init.norm.state_dict())
    head.fc1.load_state_dict(init.fc1.state_dict())
    return fit(
        head,
        data,
        hp,
        lambda logits, b: F.binary_cross_entropy_with_logits(logits, F.one_hot(b.labels, num_classes).float()),
        device,
    )


@dataclass
class TransferInputs:
    """What every fold reads: the target's data and features, the trained head to start from, head params."""

    data: PreparedDataset
    head_data: HeadData
    dims: tuple[int, int, int]
    init: MultiLevelHead
    hp: HeadTraining
    device: torch.device  # where the heads train (``config.device``)

    @property
    def folds(self) -> list[int]:
        return sorted(set(self.data.manifest["fold"].tolist()) - {-1})


def load_inputs(config: Config, prepared: Path, features: Path, head: Path) -> TransferInputs:
    """The target's data and cached features, the trained head to start from, the transfer's head settings."""
    data, head_data, dims = load_head_data(prepared, features, config.emotions)
    device = pick_device(config.device)
    return TransferInputs(data, head_data, dims, load_head(head)[0], config.transfer.head, device)


def polarity_labels(data: PreparedDataset) -> np.ndarray:
    """Each image's polarity class (0 negative, 1 positive; ``BINARY`` order), -1 where its label has none
    (Emotion6's neutral): those images are left out of the 2-class figures. Shape ``(N,)``."""
    labels = get_label_set(data.label_set)
    return labels.polarity_ids()[[labels.index(x) for x in data.manifest["label"]]]


def _fit_and_test(inputs: TransferInputs, data: HeadData, train, test, num_classes: int) -> tuple[float, list]:
    head = train_one_vs_all(data.select(train), inputs.init, inputs.dims, num_classes, inputs.hp, inputs.device)
    sub = data.select(test)
    pred = predict(head, sub, device=inputs.device).argmax(1)
    return accuracy(sub.labels.tolist(), pred.tolist()), per_class_accuracy(
        sub.labels.tolist(), pred.tolist(), num_classes
    )


def run_fold(inputs: TransferInputs, k: int) -> dict[str, Any]:
    """Train on every fold but ``k``, test on ``k`` (a nested run): the accuracy on the set's own classes with
    the per-class true-positive rate, and the 2-class (polarity) accuracy of a one-against-all polarity head
    (Table 3's two columns)."""
    num_classes = len(get_label_set(inputs.data.label_set))
    folds = inputs.data.manifest["fold"].to_numpy()
    with tracking.child_run(f"fold={k}") as mlflow:
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        acc, tpr = _fit_and_test(inputs, inputs.head_data, train, test, num_classes)
        row = {"fold": k, "accuracy": acc, "true_positive_rate": [None if np.isnan(v) else float(v) for v in tpr]}
        if inputs.data.label_set == "binary":
            row["accuracy_2class"] = acc
        else:
            polarity = polarity_labels(inputs.data)
            keep = polarity >= 0
            data = inputs.head_data.with_targets(
                torch.as_tensor(np.where(keep, polarity, 0)), inputs.head_data.distributions, inputs.head_data.p_star
            )
            row["accuracy_2class"], _ = _fit_and_test(inputs, data, train[keep[train]], test[keep[test]], 2)
        mlflow.log_metrics({"accuracy": acc, "accuracy_2class": row["accuracy_2class"]})
    return row


def summarize(
    data_name: str, label_set: str, results: list[dict[str, Any]], images_without_polarity: int = 0
) -> dict[str, Any]:
    """Mean ± std accuracy over folds, own classes and 2-class, and the mean per-class true-positive rate;
    ``images_without_polarity`` (Emotion6's neutral) were left out of the 2-class figures."""
    labels = get_label_set(label_set)
    results = sorted(results, key=lambda r: r["fold"])
    accs = [r["accuracy"] for r in results]
    tpr = np.array([[np.nan if v is None else v for v in r["true_positive_rate"]] for r in results], dtype=float)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_tpr = np.nanmean(tpr, axis=0)
    binary = [r["accuracy_2class"] for r in results]
    return {
        "dataset": data_name,
        "label_set": label_set,
        "folds": len(results),
        "accuracy_per_fold": accs,
        "accuracy_mean": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "accuracy_2class_per_fold": binary,
        "accuracy_2class_mean": float(np.mean(binary)),
        "accuracy_2class_std": float(np.std(binary)),
        "images_without_polarity": images_without_polarity,
        "true_positive_rate_per_class": {
            label: (None if np.isnan(v) else float(v)) for label, v in zip(labels.labels, mean_tpr, strict=True)
        },
        "chance_accuracy": 1.0 / len(labels),
    }


def stage_name(set_name: str) -> str:
    """The MLflow stage run of one transfer set (``dvc.yaml``'s foreach stages are named alike)."""
    return f"transfer_cv@{set_name}"


def log_summary(metrics: dict[str, Any]) -> None:
    """The fold summary as metrics of the active (stage) run."""
    tracking.log_metrics({k: metrics[k] for k in ("accuracy_mean", "accuracy_std", "accuracy_2class_mean")})


def run(config: Config, paths: TransferPaths) -> dict[str, Any]:
    inputs = load_inputs(config, paths.prepared, paths.features, paths.head)
    with tracking.stage_run(config, stage_name(paths.set_name), paths.reads):
        results = [run_fold(inputs, k) for k in inputs.folds]
        without = int((polarity_labels(inputs.data) < 0).sum())
        metrics = {"set": paths.set_name, **summarize(inputs.data.name, inputs.data.label_set, results, without)}
        log_summary(metrics)
    write_json_atomic(paths.metrics, metrics)
    return metrics
