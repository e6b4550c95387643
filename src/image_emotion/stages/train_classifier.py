"""Stage ``train_classifier``: the multi-level head on cached features — λ sweep, losses, ablations, 8/2 classes.

- λ sweep: L_multi for every λ in ``classifier.lambdas`` (the paper's Fig. 8), on the 8-class task of the
  dataset's label set, all heads in one vectorized pass; λ* is chosen on the validation split (test stays
  untouched for the report).
- Loss variants at λ*: L_cls (λ = 0), L_p (eq. 10), L_multi.
- Ablations (Table 1 rows): every mode of ``models.multilevel.MODES`` trained with L_multi at λ*, but the
  global-only row, which Table 1 trains with L_cls (its ResNet-101 baseline).
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

from image_emotion.calibration import fit_temperature
from image_emotion.config import ClassifierConfig, Config
from image_emotion.data.emotions import get_label_set
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.device import pick_device
from image_emotion.errors import ConfigError
from image_emotion.files import write_json_atomic
from image_emotion.metrics import accuracy, polarity_accuracy
from image_emotion.models.multilevel import MODES, MultiLevelHead, save_head
from image_emotion.stages.paths import ClassifierPaths
from image_emotion.tracking import runs as tracking
from image_emotion.training.heads import (
    CPU,
    HeadData,
    head_logits,
    load_head_data,
    predict,
    split_index,
    to_binary,
    train_head,
    train_lambda_heads,
)  # fmt: skip
from image_emotion.verdicts import interior_maximum, paired_bootstrap, verdict

PAPER_LAMBDA = 0.4  # seed 000 §5.4.4: "we choose λ = 0.4 in all our experiments"


def score(
    head: MultiLevelHead,
    head_data: HeadData,
    idx: dict[str, np.ndarray],
    label_set: str | None,
    device: torch.device = CPU,
) -> dict:
    """Validation and test accuracy and NLL of a trained head (and polarity accuracy for 8/6 classes)."""
    scores = {}
    for split in ("val", "test"):
        if len(idx[split]):
            sub = head_data.select(idx[split])
            probs = predict(head, sub, device=device)
            pred = probs.argmax(1)
            scores[f"{split}_accuracy"] = accuracy(sub.labels.tolist(), pred.tolist())
            nll = -torch.log(probs.gather(1, sub.labels[:, None]).clamp_min(1e-12)).mean()
            scores[f"{split}_nll"] = float(nll)
            if label_set in ("mikels8", "ekman6"):
                scores[f"{split}_polarity_accuracy"] = polarity_accuracy(sub.labels.tolist(), pred.tolist(), label_set)
    return scores


def fit_and_score(
    head_data: HeadData,
    idx: dict[str, np.ndarray],
    dims: tuple[int, int, int],
    num_classes: int,
    mode: str,
    loss: str,
    lam: float,
    hp: ClassifierConfig,
    name: str,
    label_set: str | None = None,
    device: torch.device = CPU,
) -> tuple[MultiLevelHead, dict[str, float]]:
    """Train on ``idx['train']`` (on ``device``) and return the head with its val/test accuracy, logged as a
    nested run."""
    with tracking.child_run(name, {"mode": mode, "loss": loss, "lambda": lam}) as mlflow:
        head = train_head(head_data.select(idx["train"]), dims, num_classes, mode, loss, lam, hp, hp.hidden, device)
        scores = score(head, head_data, idx, label_set, device)
        mlflow.log_metrics(scores)
    return head, scores


@dataclass
class ClassifierInputs:
    """What every training of the stage reads: the data, its cached features, the splits, the settings."""

    data: PreparedDataset
    head_data: HeadData
    dims: tuple[int, int, int]
    idx: dict[str, np.ndarray]
    num_classes: int
    mode: str
    hp: ClassifierConfig
    device: torch.device  # where the heads train (``config.device``); the features stream from disk


def load_inputs(config: Config, prepared: Path, features: Path) -> ClassifierInputs:
    """The prepared dataset with its cached features, split indices and the classifier settings."""
    data, head_data, dims = load_head_data(prepared, features, config.emotions)
    idx = {s: split_index(data, s) for s in ("train", "val", "test")}
    labels = data.manifest["label"].to_numpy()
    unseen = sorted(set(labels[idx["train"]]) - set(labels[idx["val"]]))
    if unseen:  # λ is chosen on validation only: never fall back to the test split
        raise ConfigError(
            f"{prepared}: no validation image of {', '.join(unseen)}; λ is chosen on validation, so raise "
            "prepare.split.val (or give the dataset more images of these classes)"
        )
    n_classes = len(get_label_set(data.label_set))
    device = pick_device(config.device)
    return ClassifierInputs(data, head_data, dims, idx, n_classes, config.classifier.mode, config.classifier, device)


def lambda_sweep(inputs: ClassifierInputs, lams: list[float]) -> tuple[list[MultiLevelHead], list[dict[str, Any]]]:
    """L_multi at every λ of ``lams``, the method's mode, all heads trained in one vectorized pass
    (``train_lambda_heads``); each head scored in its nested run ``lambda=<λ>``. The heads and their rows."""
    train = inputs.head_data.select(inputs.idx["train"])
    hp = inputs.hp
    heads = train_lambda_heads(train, inputs.dims, inputs.num_classes, inputs.mode, lams, hp, hp.hidden, inputs.device)
    rows = []
    for lam, head in zip(lams, heads, strict=True):
        with tracking.child_run(f"lambda={lam}", {"mode": inputs.mode, "loss": "multi", "lambda": lam}) as mlflow:
            scores = score(head, inputs.head_data, inputs.idx, inputs.data.label_set, inputs.device)
            mlflow.log_metrics(scores)
        rows.append({"lambda": lam, **scores})
    return heads, rows


def select_lambda(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep row with the best validation accuracy; ties go to the lower validation NLL."""
    return max(sweep, key=lambda r: (r["val_accuracy"], -r["val_nll"]))


def variants(inputs: ClassifierInputs, sweep: list[dict[str, Any]], best: dict[str, Any], sweep_heads: list):
    """At λ*: the loss variants, the Table 1 ablation rows and the 2-class head; and every head the claims
    compare (``"loss=<name>"``, ``"mode=<mode>"``)."""
    lam_star, mode, label_set = best["lambda"], inputs.mode, inputs.data.label_set
    train = functools.partial(fit_and_score, inputs.head_data, inputs.idx, inputs.dims, device=inputs.device)
    best_head = sweep_heads[sweep.index(best)]
    heads = {"loss=multi": best_head, f"mode={mode}": best_head}
    # L_cls is L_multi at λ = 0 (in the sweep when 0 is swept); L_multi at λ* is the sweep's best
    losses = {"multi": best}
    swept_zero = [i for i, r in enumerate(sweep) if r["lambda"] == 0.0]
    if swept_zero:
        losses["cls"], heads["loss=cls"] = sweep[swept_zero[0]], sweep_heads[swept_zero[0]]
    else:
        heads["loss=cls"], losses["cls"] = train(inputs.num_classes, mode, "cls", 0.0, inputs.hp, "loss=cls", label_set)
    heads["loss=p"], losses["p"] = train(inputs.num_classes, mode, "p", 0.0, inputs.hp, "loss=p", label_set)
    ablation = []
    for ablation_mode in MODES:
        # Table 1 trains its global-only row (a fine-tuned ResNet-101) with L_cls, every other row with L_multi
        loss, lam = ("cls", 0.0) if ablation_mode == "global" else ("multi", lam_star)
        if ablation_mode == mode and loss == "multi":  # the full method at λ*: the sweep trained it already
            scores = {k: v for k, v in best.items() if k != "lambda"}
        else:
            name = f"mode={ablation_mode}"
            heads[name], scores = train(inputs.num_classes, ablation_mode, loss, lam, inputs.hp, name, label_set)
        ablation.append({"mode": ablation_mode, "loss": loss, "lambda": lam, **scores})
    binary_data = to_binary(inputs.data, inputs.head_data) if label_set != "binary" else inputs.head_data
    binary_head, binary = fit_and_score(
        binary_data, inputs.idx, inputs.dims, 2, mode, "multi", lam_star, inputs.hp, "binary", device=inputs.device
    )
    return losses, ablation, binary_head, binary, heads


def correct(head: MultiLevelHead, inputs: ClassifierInputs, split: str) -> np.ndarray:
    """Whether ``head`` is right on each image of ``split`` ``(N,)``, in the split's order."""
    rows = inputs.head_data.select(inputs.idx[split])
    return (predict(head, rows, device=inputs.device).argmax(1) == rows.labels).numpy()


CLAIM_PAIRS = {  # seed 000's claims on test: (the row that should win, the row it should beat)
    "regions_over_global": ("mode=global+emotional", "mode=global"),
    "emotional_over_object": ("mode=global+emotional", "mode=global+object"),
    "multi_over_cls": ("loss=multi", "loss=cls"),
}


def claim_intervals(
    inputs: ClassifierInputs, heads: dict[str, MultiLevelHead], sweep: list[dict[str, Any]], sweep_heads: list,
    best: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Each claim's paired bootstrap interval over the test images and its verdict; the λ claim's intervals are
    over the validation images (where λ* is chosen), λ* against λ = 0 and λ = 1."""
    out: dict[str, Any] = {}
    for key, (winner, loser) in CLAIM_PAIRS.items():
        if winner in heads and loser in heads:
            interval = paired_bootstrap(correct(heads[winner], inputs, "test"), correct(heads[loser], inputs, "test"))
            out[key] = {**interval, "compares": [winner, loser], "split": "test", "verdict": verdict(interval)}
    lambdas = [r["lambda"] for r in sweep]
    best_val = correct(sweep_heads[sweep.index(best)], inputs, "val")
    versus = {
        end: paired_bootstrap(best_val, correct(sweep_heads[lambdas.index(end)], inputs, "val"))
        for end in (0.0, 1.0)
        if end in lambdas
    }
    out["lambda_inside"] = {
        "lambda": best["lambda"],
        "split": "val",
        "versus_ends": {str(end): interval for end, interval in versus.items()},
        "verdict": interior_maximum(lambdas, best["lambda"], versus),
    }
    return out


def validation_temperature(head: MultiLevelHead, data: HeadData, val: np.ndarray, device: torch.device) -> float:
    """The temperature of ``head``'s logits fitted on the validation rows ``val`` (1.0 without any)."""
    rows = data.select(val)
    return fit_temperature(head_logits(head, rows, device=device), rows.labels)


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
    claims: dict[str, Any],
) -> dict:
    """Save the λ* heads and the stage's metrics files; returns the summary metrics."""
    paths.out_dir.mkdir(parents=True, exist_ok=True)
    binary_data = to_binary(inputs.data, inputs.head_data) if inputs.data.label_set != "binary" else inputs.head_data
    temperature = validation_temperature(best_head, inputs.head_data, inputs.idx["val"], inputs.device)
    binary_temperature = validation_temperature(binary_head, binary_data, inputs.idx["val"], inputs.device)
    extras = {"lambda": best["lambda"], "temperature": temperature, "dataset": inputs.data.name}  # predict names it
    save_head(paths.out_dir / "head.pt", best_head, inputs.dims, inputs.data.label_set, extras)
    binary_extras = {**extras, "temperature": binary_temperature}
    save_head(paths.out_dir / "head_binary.pt", binary_head, inputs.dims, "binary", binary_extras)
    metrics = {
        "dataset": inputs.data.name,
        "label_set": inputs.data.label_set,
        "mode": inputs.mode,
        "best_lambda": best["lambda"],
        "temperature": temperature,  # fitted on validation (calibration.py); argmax and accuracy unchanged
        "val_accuracy": best["val_accuracy"],
        "test_accuracy": best["test_accuracy"],
        "test_polarity_accuracy": best.get("test_polarity_accuracy"),
        "binary_test_accuracy": binary["test_accuracy"],
        "loss_variants_test_accuracy": {k: v["test_accuracy"] for k, v in losses.items()},
        "loss_variants_test_polarity_accuracy": {k: v.get("test_polarity_accuracy") for k, v in losses.items()},
        # the paper fixes λ = 0.4 (its Fig. 8, on FI's validation set); λ* above is chosen on this run's
        "paper_lambda": next(({**r, "lambda": PAPER_LAMBDA} for r in sweep if r["lambda"] == PAPER_LAMBDA), None),
        "chance_accuracy": 1.0 / inputs.num_classes,
        "claims": claims,  # paired bootstrap intervals and verdicts (verdicts.py)
    }
    write_json_atomic(paths.sweep, sweep)
    write_json_atomic(paths.ablation, ablation)
    write_json_atomic(paths.metrics, metrics)
    return metrics


def run(config: Config, paths: ClassifierPaths) -> dict[str, Any]:
    """The whole stage: sweep, select λ*, variants at λ*, outputs."""
    inputs = load_inputs(config, paths.prepared, paths.features)
    with tracking.stage_run(config, "train_classifier", paths.reads):
        heads, sweep = lambda_sweep(inputs, list(config.classifier.lambdas))
        best = select_lambda(sweep)
        losses, ablation, binary_head, binary, compared = variants(inputs, sweep, best, heads)
        claims = claim_intervals(inputs, compared, sweep, heads, best)
    best_head = heads[sweep.index(best)]
    return write_outputs(paths, inputs, best_head, sweep, best, losses, ablation, binary_head, binary, claims)
