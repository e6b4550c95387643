"""Stage ``evaluate``: test metrics (DVC metrics) and plots (DVC plots, also MLflow artifacts).

Writes ``metrics/evaluate.json`` (test accuracy, per-class accuracy, 8 -> 2 polarity accuracy, the 2-class
model, Table 1 rows, the transfer result) and under ``plots/``: ``confusion.csv`` (actual, predicted - for
``dvc plots``' confusion template) and ``confusion.png``, ``lambda_curve.csv`` / ``.png`` (accuracy vs λ,
the paper's Fig. 8), ``ablation.csv`` (Table 1), and ``regions.png``: test images with their top emotional
regions (red, the best first, thicker, labelled rank · score) and the ground-truth boxes (green), titled true /
predicted, with a legend.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from image_emotion.calibration import ECE_BINS, calibration_error, expected_calibration_error, reliability
from image_emotion.config import Config
from image_emotion.data.emotions import get_label_set
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.device import pick_device
from image_emotion.figures import pyplot, save_figure
from image_emotion.files import atomic_path, write_json_atomic, write_text_atomic
from image_emotion.metrics import classification_report
from image_emotion.models.multilevel import load_head
from image_emotion.stages.paths import EvaluatePaths
from image_emotion.tracking import runs as tracking
from image_emotion.training.heads import head_logits, load_head_data, predict, split_index, to_binary


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def plot_lambda_curve(sweep: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    lam = [r["lambda"] for r in sweep]
    for key, style in (("val_accuracy", "o--"), ("test_accuracy", "s-")):
        ax.plot(lam, [r[key] for r in sweep], style, label=key.replace("_", " "))
    ax.set_xlabel("λ in (1-λ)·L_cls + λ·L_ed")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_confusion(cm: np.ndarray, labels: tuple[str, ...], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    save_figure(fig, path)


def region_overlays(
    data: PreparedDataset, rows, boxes: torch.Tensor, scores: torch.Tensor, true: list[str], pred: list[str], out: Path
) -> None:
    """A grid of test images, each with its top-3 emotional regions (``boxes (N, K, 4)``, ``scores (N, K)``; those
    under ``figures.MIN_DRAWN_SCORE`` left out) labelled with rank and score, its ground-truth boxes, and
    "true / predicted" above it (red when they differ), with a legend under the grid."""
    from image_emotion import figures

    font = figures.label_font(11)
    tiles = []
    for (path, gt), b, sc, t, p in zip(rows, boxes, scores, true, pred, strict=True):
        img = data.image(path)
        sx, sy = 192 / img.width, 192 / img.height
        img = img.resize((192, 192))
        draw = ImageDraw.Draw(img)
        for x1, y1, x2, y2 in gt:
            draw.rectangle((x1 * sx, y1 * sy, x2 * sx, y2 * sy), outline=figures.TRUTH, width=2)
        regions = figures.region_dicts([[*box, score] for box, score in zip(b.tolist(), sc.tolist(), strict=True)])
        figures.draw_regions(draw, regions, (sx, sy), 3, figures.MIN_DRAWN_SCORE, font)
        canvas = Image.new("RGB", (192, 212), "white")
        canvas.paste(img, (0, 20))
        ImageDraw.Draw(canvas).text((4, 4), f"{t} / {p}", fill=(0, 0, 0) if t == p else figures.REGION, font=font)
        tiles.append(canvas)
    cols = 4
    grid = Image.new("RGB", (192 * cols, 212 * ((len(tiles) + cols - 1) // cols)), "white")
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % cols) * 192, (i // cols) * 212))
    legend = [
        (figures.REGION, figures.REGION_LEGEND),
        (figures.TRUTH, "ground-truth emotional region (the set's boxes)"),
        (None, "above each image: true / predicted emotion, red when wrong"),
        (None, f"regions scoring under {figures.MIN_DRAWN_SCORE} are not drawn"),
    ]
    with atomic_path(out) as tmp:
        figures.stack(grid, figures.legend_band(grid.width, legend, font)).save(tmp, format="PNG")


TRANSFER_COLUMNS = (  # Table 3: own classes and 2-class, mean ± std over the folds
    "dataset",
    "label_set",
    "accuracy_mean",
    "accuracy_std",
    "accuracy_2class_mean",
    "accuracy_2class_std",
    "images_without_polarity",
)


def calibration_figures(
    temperature: float, test_logits: Tensor, test_labels: Tensor, val_logits: Tensor, val_labels: Tensor
) -> dict[str, Any]:
    """ECE on test (and validation) without and with the head's fitted ``temperature``, and the test reliability
    bins, from each split's logits."""
    bins = {
        name: reliability((test_logits / t).softmax(-1), test_labels)
        for name, t in (("before", 1.0), ("after", temperature))
    }
    figures: dict[str, Any] = {
        "temperature": temperature,
        "bins": ECE_BINS,
        "test_ece_before": calibration_error(bins["before"]),
        "test_ece_after": calibration_error(bins["after"]),
        "reliability": bins,
    }
    if len(val_labels):
        figures["val_ece_before"] = expected_calibration_error(val_logits.softmax(-1), val_labels)
        figures["val_ece_after"] = expected_calibration_error((val_logits / temperature).softmax(-1), val_labels)
    return figures


def plot_reliability(figures: dict[str, Any], path: Path) -> None:
    """The reliability diagram on test: each bin's accuracy against its confidence, without and with the
    temperature."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", label="perfect calibration")
    for name, style, text in (("before", "s--", "T = 1"), ("after", "o-", f"T = {figures['temperature']:.2f}")):
        shown = [r for r in figures["reliability"][name] if r["count"]]
        ece = figures[f"test_ece_{name}"]
        ax.plot([r["confidence"] for r in shown], [r["accuracy"] for r in shown], style, label=f"{text}: ECE {ece:.3f}")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="reliability on test")
    ax.legend(loc="upper left", fontsize=8)
    save_figure(fig, path)


def read_transfer(path: Path) -> dict[str, dict[str, Any]]:
    """The transfer results by set name, from the directory of ``<set>.json`` files (none: empty)."""
    return {f.stem: json.loads(f.read_text()) for f in sorted(path.glob("*.json"))} if path.is_dir() else {}


def run(config: Config, paths: EvaluatePaths) -> dict[str, Any]:
    data, head_data, _ = load_head_data(paths.prepared, paths.features, config.emotions)
    labels = get_label_set(data.label_set)
    test = split_index(data, "test")
    head, head_state = load_head(paths.head)
    sub = head_data.select(test)
    device = pick_device(config.device)
    test_logits = head_logits(head, sub, device=device)  # once: the accuracy and the calibration read them
    pred = test_logits.argmax(1)
    report = classification_report(sub.labels.tolist(), pred.tolist(), data.label_set)
    val = head_data.select(split_index(data, "val"))  # what promotion compares (test is only reported)
    val_logits = head_logits(head, val, device=device)
    val_accuracy = float((val_logits.argmax(1) == val.labels).float().mean()) if len(val.labels) else None
    temperature = float(head_state.get("temperature", 1.0))
    calibration = calibration_figures(temperature, test_logits, sub.labels, val_logits, val.labels)

    binary_head, _ = load_head(paths.head_binary)
    binary = to_binary(data, head_data).select(test) if data.label_set != "binary" else sub
    binary_report = classification_report(
        binary.labels.tolist(), predict(binary_head, binary, device=device).argmax(1).tolist(), "binary"
    )
    sweep = json.loads(paths.sweep.read_text())
    ablation = json.loads(paths.ablation.read_text())
    transfer = read_transfer(paths.transfer)
    table1 = {r["mode"]: r["test_accuracy"] for r in ablation}
    metrics = {
        "dataset": data.name,
        "label_set": data.label_set,
        "lambda": head_state.get("lambda"),
        "val_accuracy": val_accuracy,
        "num_val_images": len(val.labels),
        "test_accuracy": report["accuracy"],
        "test_polarity_accuracy": report.get("polarity_accuracy"),
        "binary_test_accuracy": binary_report["accuracy"],
        "per_class_accuracy": report["per_class_accuracy"],
        "num_test_images": report["num_samples"],
        "table1": table1,
        "emotional_over_global": table1.get("emotional", 0.0) - table1.get("global", 0.0),
        "transfer": {  # Table 3: each transfer set, mean ± std over its folds
            name: {k: t.get(k) for k in TRANSFER_COLUMNS} for name, t in transfer.items()
        },
        "chance_accuracy": 1.0 / len(labels),
        "calibration": {k: v for k, v in calibration.items() if k != "reliability"},
    }

    plots = paths.plots
    plots.mkdir(parents=True, exist_ok=True)
    true_names = [labels.labels[i] for i in sub.labels.tolist()]
    pred_names = [labels.labels[i] for i in pred.tolist()]
    confusion_rows = [{"actual": t, "predicted": p} for t, p in zip(true_names, pred_names, strict=True)]
    write_text_atomic(plots / "confusion.csv", _csv(confusion_rows, ["actual", "predicted"]))
    write_text_atomic(plots / "lambda_curve.csv", _csv(sweep, ["lambda", "val_accuracy", "test_accuracy"]))
    write_text_atomic(plots / "ablation.csv", _csv(ablation, ["mode", "val_accuracy", "test_accuracy"]))
    plot_lambda_curve(sweep, plots / "lambda_curve.png")
    plot_reliability(calibration, plots / "reliability.png")
    reliability_rows = [
        {"temperature": name, **r} for name in ("before", "after") for r in calibration["reliability"][name]
    ]
    columns = ["temperature", "lower", "upper", "count", "confidence", "accuracy"]
    write_text_atomic(plots / "reliability.csv", _csv(reliability_rows, columns))
    plot_confusion(np.array(report["confusion_matrix"]), labels.labels, plots / "confusion.png")
    sample = test[: config.evaluate.num_overlays]
    regions = head_data.select(sample).tensors(("emotional_boxes", "emotional_scores"))
    rows = list(zip(data.manifest["path"].iloc[sample], data.manifest["boxes"].iloc[sample], strict=True))
    region_overlays(
        data, rows, regions["emotional_boxes"], regions["emotional_scores"], true_names[: len(sample)],
        pred_names[: len(sample)], plots / "regions.png",
    )  # fmt: skip

    with tracking.stage_run(config, "evaluate", paths.reads) as mlflow:
        tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
        tracking.log_metrics({f"calibration_{k}": v for k, v in metrics["calibration"].items() if isinstance(v, float)})
        for name in ("confusion.png", "lambda_curve.png", "regions.png", "reliability.png", "ablation.csv",
                     "lambda_curve.csv"):  # fmt: skip
            mlflow.log_artifact(str(plots / name), artifact_path="plots")
    write_json_atomic(paths.metrics, metrics)
    return metrics
