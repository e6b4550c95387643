"""Stage ``train_classifier``: the multi-level head on cached features — λ sweep, losses, ablations, 8/2 classes.

- λ sweep: L_multi for every λ in ``classifier.lambdas`` (the paper's Fig. 8), on the 8-class task of the
  dataset's label set; λ* is chosen on the validation split (test stays untouched for the report).
- Loss variants at λ*: L_cls (λ = 0), L_p (eq. 10), L_multi.
- Ablations (Table 1 rows): every mode of ``models.multilevel.MODES`` trained with L_multi at λ*.
- 2-class: the same head on polarity labels (distributions summed by polarity), and the 8 -> 2 accuracy.
Each training is a nested MLflow run. Outputs: the λ* heads (``models/classifier/head.pt``,
``head_binary.pt``) and ``metrics/lambda_sweep.json``, ``metrics/ablation.json``, ``metrics/classifier.json``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from image_emotion import tracking
from image_emotion.checkpoint import save_checkpoint
from image_emotion.config import get
from image_emotion.data.emotions import BINARY, get_label_set
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.errors import ConfigError
from image_emotion.feature_cache import load_cache
from image_emotion.head_training import HeadData, head_params, predict, train_head
from image_emotion.io import write_json_atomic
from image_emotion.metrics import accuracy, polarity_accuracy
from image_emotion.models.multilevel import MODES, MultiLevelHead
from image_emotion.stages.paths import ClassifierPaths


def load_head_data(prepared: Path, features: Path, p_default: float) -> tuple[PreparedDataset, HeadData, tuple]:
    """The prepared dataset and its cached features, row-aligned; ``dims`` = (Dg, Dl, K)."""
    data = PreparedDataset.load(prepared)
    cache = load_cache(features)
    if cache["paths"] != list(data.manifest["path"]):
        raise ConfigError(
            f"{features}: cached features are for another manifest; re-run `image-emotion extract-regions`"
        )
    feats = {k: cache[k] for k in ("global", "emotional", "object", "emotional_boxes")}  # boxes: for plots
    head_data = HeadData(feats, data.labels(), data.distributions(p_default), data.label_probabilities(p_default))
    dims = (feats["global"].shape[1], feats["emotional"].shape[2], feats["emotional"].shape[1])
    return data, head_data, dims


def to_binary(data: PreparedDataset, head_data: HeadData) -> HeadData:
    """Polarity labels, distributions summed by polarity, and p* of the polarity."""
    labels = get_label_set(data.label_set)
    positive = torch.tensor([labels.polarity(x) == "positive" for x in labels.labels], dtype=torch.float32)
    pos_mass = head_data.distributions @ positive
    dist = torch.stack([1 - pos_mass, pos_mass], dim=1)
    y = torch.tensor([BINARY.index(labels.polarity(x)) for x in data.manifest["label"]])
    return head_data.with_targets(y, dist, dist.gather(1, y[:, None])[:, 0])


def split_index(data: PreparedDataset, name: str) -> np.ndarray:
    return np.flatnonzero(data.manifest["split"].to_numpy() == name)


def fit_and_score(
    head_data: HeadData,
    idx: dict[str, np.ndarray],
    dims: tuple[int, int, int],
    num_classes: int,
    mode: str,
    loss: str,
    lam: float,
    hp: dict[str, Any],
    name: str,
    label_set: str | None = None,
) -> tuple[MultiLevelHead, dict[str, float]]:
    """Train on ``idx['train']`` and return the head with its val/test accuracy, logged as a nested run."""
    with tracking.child_run(name, {"mode": mode, "loss": loss, "lambda": lam}) as mlflow:
        head = train_head(head_data.select(idx["train"]), dims, num_classes, mode, loss, lam, hp)
        scores = {}
        for split in ("val", "test"):
            if len(idx[split]):
                sub = head_data.select(idx[split])
                probs = predict(head, sub.features)
                pred = probs.argmax(1)
                scores[f"{split}_accuracy"] = accuracy(sub.labels.tolist(), pred.tolist())
                nll = -torch.log(probs.gather(1, sub.labels[:, None]).clamp_min(1e-12)).mean()
                scores[f"{split}_nll"] = float(nll)
                if label_set in ("mikels8", "ekman6"):
                    scores[f"{split}_polarity_accuracy"] = polarity_accuracy(
                        sub.labels.tolist(), pred.tolist(), label_set
                    )
        mlflow.log_metrics(scores)
    return head, scores


def save_head(path: Path, head: MultiLevelHead, dims, label_set: str, extra: dict[str, Any]) -> None:
    save_checkpoint(
        path,
        {
            "state_dict": head.state_dict(),
            "dims": list(dims),
            "mode": head.mode,
            "num_classes": head.fc2.out_features,
            "hidden": head.fc1.out_features,
            "label_set": label_set,
            **extra,
        },
    )


def load_head(path: Path) -> tuple[MultiLevelHead, dict[str, Any]]:
    from image_emotion.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    if state is None:
        raise ConfigError(f"{path}: classifier head not found; run `image-emotion train-classifier` first")
    dg, dl, k = state["dims"]
    head = MultiLevelHead(dg, dl, k, state["num_classes"], mode=state["mode"], hidden=state["hidden"])
    head.load_state_dict(state["state_dict"])
    return head.eval(), state


@dataclass
class ClassifierInputs:
    """What every training of the stage reads: the data, its cached features, the splits, the settings."""

    data: PreparedDataset
    head_data: HeadData
    dims: tuple[int, int, int]
    idx: dict[str, np.ndarray]
    num_classes: int
    mode: str
    hp: dict[str, Any]


def load_inputs(params: dict[str, Any], prepared: Path, features: Path) -> ClassifierInputs:
    section = get(params, "classifier", {}) or {}
    p_default = float(get(params, "emotions.dominant_probability", 0.7))
    data, head_data, dims = load_head_data(prepared, features, p_default)
    idx = {s: split_index(data, s) for s in ("train", "val", "test")}
    if not len(idx["val"]):
        idx["val"] = idx["test"]  # official splits without validation images (EmotionROI): select on test
    n_classes = len(get_label_set(data.label_set))
    return ClassifierInputs(
        data, head_data, dims, idx, n_classes, str(section.get("mode", "global+emotional")), head_params(section)
    )


def lambdas(params: dict[str, Any]) -> list[float]:
    """The λ sweep of params ``classifier.lambdas`` (default 0.0, 0.1, ..., 1.0)."""
    section = get(params, "classifier", {}) or {}
    return [float(x) for x in section.get("lambdas", [round(0.1 * i, 1) for i in range(11)])]


def sweep_point(inputs: ClassifierInputs, lam: float) -> tuple[MultiLevelHead, dict[str, Any]]:
    """One point of the λ sweep: L_multi at ``lam``, the method's mode; the head and its scores row."""
    head, scores = fit_and_score(
        inputs.head_data,
        inputs.idx,
        inputs.dims,
        inputs.num_classes,
        inputs.mode,
        "multi",
        lam,
        inputs.hp,
        f"lambda={lam}",
        inputs.data.label_set,
    )
    return head, {"lambda": lam, **scores}


def select_lambda(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep row with the best validation accuracy; ties go to the lower validation NLL."""
    return max(sweep, key=lambda r: (r["val_accuracy"], -r["val_nll"]))


def variants(inputs: ClassifierInputs, sweep: list[dict[str, Any]], best: dict[str, Any]):
    """At λ*: the loss variants, the Table 1 ablation rows and the 2-class head."""
    lam_star, mode, label_set = best["lambda"], inputs.mode, inputs.data.label_set
    train = functools.partial(fit_and_score, inputs.head_data, inputs.idx, inputs.dims)
    # L_cls is L_multi at λ = 0 (in the sweep when 0 is swept); L_multi at λ* is the sweep's best
    losses = {"multi": best}
    swept_zero = [r for r in sweep if r["lambda"] == 0.0]
    losses["cls"] = (
        swept_zero[0]
        if swept_zero
        else train(inputs.num_classes, mode, "cls", 0.0, inputs.hp, "loss=cls", label_set)[1]
    )
    losses["p"] = train(inputs.num_classes, mode, "p", 0.0, inputs.hp, "loss=p", label_set)[1]
    ablation = []
    for ablation_mode in MODES:
        if ablation_mode == mode:  # the full method at λ*: the sweep trained it already
            scores = {k: v for k, v in best.items() if k != "lambda"}
        else:
            scores = train(
                inputs.num_classes, ablation_mode, "multi", lam_star, inputs.hp, f"mode={ablation_mode}", label_set
            )[1]
        ablation.append({"mode": ablation_mode, "lambda": lam_star, **scores})
    binary_data = to_binary(inputs.data, inputs.head_data) if label_set != "binary" else inputs.head_data
    binary_head, binary = fit_and_score(
        binary_data, inputs.idx, inputs.dims, 2, mode, "multi", lam_star, inputs.hp, "binary"
    )
    return losses, ablation, binary_head, binary


def write_outputs(
    paths: ClassifierPaths,
    inputs: ClassifierInputs,
    best_head: MultiLevelHead,
    sweep: list[dict[str, Any]],
    best: dict[str, Any],
    losses,
    ablation,
    binary_head,
    binary,
) -> dict:
    """Save the λ* heads and the stage's metrics files; returns the summary metrics."""
    paths.out_dir.mkdir(parents=True, exist_ok=True)
    save_head(paths.out_dir / "head.pt", best_head, inputs.dims, inputs.data.label_set, {"lambda": best["lambda"]})
    save_head(paths.out_dir / "head_binary.pt", binary_head, inputs.dims, "binary", {"lambda": best["lambda"]})
    metrics = {
        "dataset": inputs.data.name,
        "label_set": inputs.data.label_set,
        "mode": inputs.mode,
        "best_lambda": best["lambda"],
        "val_accuracy": best["val_accuracy"],
        "test_accuracy": best["test_accuracy"],
        "test_polarity_accuracy": best.get("test_polarity_accuracy"),
        "binary_test_accuracy": binary["test_accuracy"],
        "loss_variants_test_accuracy": {k: v["test_accuracy"] for k, v in losses.items()},
        "chance_accuracy": 1.0 / inputs.num_classes,
    }
    write_json_atomic(paths.sweep, sweep)
    write_json_atomic(paths.ablation, ablation)
    write_json_atomic(paths.metrics, metrics)
    return metrics


def run(params: dict[str, Any], paths: ClassifierPaths) -> dict[str, Any]:
    """The whole stage: sweep, select λ*, variants at λ*, outputs."""
    inputs = load_inputs(params, paths.prepared, paths.features)
    with tracking.stage_run(params, "train_classifier", {"classifier": get(params, "classifier", {}) or {}}):
        heads, sweep = {}, []
        for lam in lambdas(params):
            heads[lam], row = sweep_point(inputs, lam)
            sweep.append(row)
        best = select_lambda(sweep)
        losses, ablation, binary_head, binary = variants(inputs, sweep, best)
    return write_outputs(paths, inputs, heads[best["lambda"]], sweep, best, losses, ablation, binary_head, binary)
