"""Stage ``retrieve_transfer`` (seed 002): the FI model transferred to one small set by the paper's protocol.

The paper (Yang et al., Implementation Details) transfers "the parameters of the network fine-tuned on the FI as well
as the hyper-parameters to the small-scale datasets, which are split into 80% training and 20% testing set
randomly", 5-fold, reporting the mean. Here: for each of the set's 5 stratified folds (``prepare.folds``, the same
folds seed 000's transfer uses), a copy of the trained model is fine-tuned on the other folds with the model's own
objective and ``metric``'s hyper-parameters (a new classifier layer when the set has other classes), then scored
on its fold: accuracy and the seven retrieval measures, fold queries against the training folds' gallery. Mean
and standard deviation over the folds.

Kept as an extra, not the paper's: leave-one-out retrieval with the FI model as trained (every image a query
against all the others, no fine-tuning). Writes ``metrics/retrieval_transfer/<set>.json``.
"""

from __future__ import annotations

import copy
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
from image_emotion.metrics import retrieval_report
from image_emotion.models.metric import SentimentVectorNet, load_metric_model
from image_emotion.stages.paths import RetrieveTransferPaths
from image_emotion.tracking import runs as tracking
from image_emotion.training.metric import (
    RETRIEVAL_MEASURES,
    MetricObjective,
    embed,
    embed_prepared,
    score,
    train_metric_net,
)
from image_emotion.training.metric_inputs import ImageRows, StreamedTrunk

MEASURES = ("accuracy", *RETRIEVAL_MEASURES)
PROTOCOL = "fine-tuned on 4 folds, tested on the fifth (80/20), 5 folds"


def for_classes(model: SentimentVectorNet, num_classes: int, seed: int) -> SentimentVectorNet:
    """A copy of ``model`` for a set of ``num_classes`` classes: the same weights, a new classifier layer (drawn from
    ``seed``) when the count differs."""
    tuned = copy.deepcopy(model)
    if tuned.num_classes != num_classes:
        torch.manual_seed(seed)
        old = tuned.classifier
        tuned.classifier = torch.nn.Linear(old.in_features, num_classes).to(old.weight.device)
    return tuned


def fine_tuned_folds(
    model: SentimentVectorNet, state: dict[str, Any], data: PreparedDataset, cfg: MetricConfig, scratch: Path
) -> list[dict[str, Any]]:
    """Each fold's scores (``{"fold": k, "train_images", "test_images", "accuracy", "nn", ...}``) after fine-tuning a
    copy of ``model`` on the other folds. A frozen backbone's maps are computed once for every fold."""
    folds = data.manifest["fold"].to_numpy()
    ks = sorted(set(folds.tolist()) - {-1})
    if len(ks) < 2:
        raise ConfigError(f"{data.root}: seed 002's transfer needs at least 2 folds; set prepare.folds")
    images = ImageRows(data, state["image_size"], state["image_mean"], state["image_std"])
    labels = data.labels()
    num_classes = len(get_label_set(data.label_set))
    objective = MetricObjective(**state["objective"])
    feature = state["retrieval_feature"]
    trunk = StreamedTrunk(model, images, scratch / "trunk") if cfg.freeze_backbone else None
    rows = []
    for k in ks:
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        with tracking.child_run(f"fold={k}", {"fold": k, "retrieval_feature": feature}):
            tuned = for_classes(model, num_classes, cfg.seed + k)
            train_metric_net(
                tuned, images.select(train), labels[train], data.label_set, objective,
                epochs=cfg.epochs, batch_size=cfg.batch_size, min_per_class=cfg.min_per_class, lr_conv=cfg.lr_conv,
                lr_last=cfg.lr_last, momentum=cfg.momentum, freeze_backbone=cfg.freeze_backbone, seed=cfg.seed + k,
                trunk=trunk.subset(train) if trunk is not None else None,
            )  # fmt: skip
            out = embed(tuned, images, trunk=trunk)
            scores = score(out, labels.numpy(), test, train, feature, data.label_set, objective.omega < 1.0)
            tracking.log_metrics(scores)
        rows.append({"fold": k, "train_images": len(train), "test_images": len(test), **scores})
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean and (sample) standard deviation of every measure over the folds' ``rows``."""
    out: dict[str, float | None] = {}
    for key in MEASURES:
        values = [r[key] for r in rows]
        out[key] = float(np.mean(values))
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
    return out


def run(config: Config, paths: RetrieveTransferPaths) -> dict[str, Any]:
    """The stage: the paper's 5-fold fine-tuning protocol, and leave-one-out with the FI model as an extra."""
    model, state = load_metric_model(paths.model)
    model.to(pick_device(config.device))
    data = PreparedDataset.load(paths.prepared)
    labels = data.labels().numpy()
    with (
        tracking.stage_run(config, f"retrieve@{paths.set_name}", paths.reads),
        tempfile.TemporaryDirectory(prefix="trunk-") as scratch,
    ):
        folds = fine_tuned_folds(model, state, data, config.metric, Path(scratch))
        mean = summary(folds)
        features = embed_prepared(model, state, data)  # the FI model as trained, for the leave-one-out extra
        loo = retrieval_report(
            features[state["retrieval_feature"]], labels, features[state["retrieval_feature"]], labels,
            data.label_set, exclude_self=True,
        )  # fmt: skip
        tracking.log_metrics({k: mean[k] for k in MEASURES})
        tracking.log_metrics({f"leave_one_out_{k}": loo[k] for k in RETRIEVAL_MEASURES})
    result = {
        "set": paths.set_name,
        "protocol": PROTOCOL,
        "dataset": data.name,
        "label_set": data.label_set,
        "images": len(labels),
        **mean,
        "folds": folds,
        "leave_one_out": {"protocol": "leave-one-out with the FI model, not fine-tuned", **loo},
    }
    write_json_atomic(paths.metrics, result)
    return result
