"""Stage ``transfer_cv``: from the trained model to a small dataset, one-against-all, 5-fold CV.

The target (params ``transfer``: IAPSsubset, ArtPhoto, Abstract or EmotionROI layouts, or the embedded small
set) is prepared with stratified folds and its region features extracted by the trained detector. For each
fold k, a head whose hidden layer starts from the trained classifier's (the transfer) is trained on the other
folds with one sigmoid output per class - one-against-all: each output is a binary "this emotion vs the
rest" classifier - and an image gets the class whose classifier is most confident. Reports mean ± std
accuracy over the folds (the paper's protocol) and the per-class true-positive rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from image_emotion import tracking
from image_emotion.config import get
from image_emotion.data.emotions import get_label_set
from image_emotion.head_training import HeadData, head_params
from image_emotion.io import write_json_atomic
from image_emotion.metrics import accuracy, per_class_accuracy
from image_emotion.models.multilevel import MultiLevelHead
from image_emotion.stages.train_classifier import load_head, load_head_data


@dataclass(frozen=True)
class TransferPaths:
    prepared: Path = Path("data/prepared_transfer")
    features: Path = Path("data/features/transfer")
    head: Path = Path("models/classifier/head.pt")
    metrics: Path = Path("metrics/transfer.json")


def train_one_vs_all(data: HeadData, init: MultiLevelHead, dims, num_classes: int, hp: dict[str, Any]):
    """One logistic output per class (BCE on one-vs-rest targets) over a hidden layer started from ``init``."""
    torch.manual_seed(int(hp["seed"]))
    dg, dl, k = dims
    head = MultiLevelHead(
        dg, dl, k, num_classes, mode=init.mode, hidden=init.fc1.out_features, dropout=float(hp["dropout"])
    )
    head.norm.load_state_dict(init.norm.state_dict())
    head.fc1.load_state_dict(init.fc1.state_dict())
    targets = F.one_hot(data.labels, num_classes).float()
    optimizer = torch.optim.SGD(
        head.parameters(), lr=float(hp["lr"]), momentum=float(hp["momentum"]), weight_decay=float(hp["weight_decay"])
    )
    generator = torch.Generator().manual_seed(int(hp["seed"]))
    head.train()
    for _ in range(int(hp["epochs"])):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), int(hp["batch_size"])):
            idx = order[start : start + int(hp["batch_size"])]
            logits = head({k: v[idx] for k, v in data.features.items()})
            loss = F.binary_cross_entropy_with_logits(logits, targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head.eval()


def run(params: dict[str, Any], paths: TransferPaths) -> dict[str, Any]:
    section = get(params, "transfer", {}) or {}
    hp = head_params({**(get(params, "classifier", {}) or {}), **(section.get("head", {}) or {})})
    p_default = float(get(params, "emotions.dominant_probability", 0.7))
    data, head_data, dims = load_head_data(paths.prepared, paths.features, p_default)
    init, _ = load_head(paths.head)
    labels = get_label_set(data.label_set)
    folds = data.manifest["fold"].to_numpy()
    fold_ids = sorted(set(folds.tolist()) - {-1})
    per_fold, per_class = [], []
    with tracking.stage_run(params, "transfer_cv", {"transfer": section, "head": hp}):
        for k in fold_ids:
            with tracking.child_run(f"fold={k}") as mlflow:
                train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
                head = train_one_vs_all(head_data.select(train), init, dims, len(labels), hp)
                sub = head_data.select(test)
                with torch.inference_mode():
                    pred = head(sub.features).argmax(1)
                acc = accuracy(sub.labels.tolist(), pred.tolist())
                per_fold.append(acc)
                per_class.append(per_class_accuracy(sub.labels.tolist(), pred.tolist(), len(labels)))
                mlflow.log_metric("accuracy", acc)
        metrics = {
            "dataset": data.name,
            "label_set": data.label_set,
            "folds": len(fold_ids),
            "accuracy_per_fold": per_fold,
            "accuracy_mean": float(np.mean(per_fold)),
            "accuracy_std": float(np.std(per_fold)),
            "true_positive_rate_per_class": {
                label: (None if np.isnan(v) else float(v))
                for label, v in zip(labels.labels, np.nanmean(np.stack(per_class), axis=0), strict=True)
            },
            "chance_accuracy": 1.0 / len(labels),
        }
        tracking.log_metrics({"accuracy_mean": metrics["accuracy_mean"], "accuracy_std": metrics["accuracy_std"]})
    write_json_atomic(paths.metrics, metrics)
    return metrics
