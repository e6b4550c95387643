"""Classification metrics: accuracy, per-class accuracy, confusion matrix, 8 -> 2-class polarity accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from image_emotion.data.emotions import get_label_set


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts ``(C, C)``: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return cm


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Share of exact matches; 0.0 for no samples."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return float((t == p).mean()) if len(t) else 0.0


def per_class_accuracy(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Recall of each class ``(C,)``; NaN for classes without samples."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def polarity_accuracy(y_true: Sequence[int], y_pred: Sequence[int], label_set: str = "mikels8") -> float:
    """Accuracy after mapping both true and predicted classes to positive/negative (the paper's 8 -> 2)."""
    labels = get_label_set(label_set)
    pol = np.array([labels.polarity(x) == "positive" for x in labels.labels])
    return accuracy(pol[np.asarray(y_true, dtype=int)], pol[np.asarray(y_pred, dtype=int)])


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], label_set: str) -> dict:
    """Every metric above in one JSON-ready dict (per-class keyed by label)."""
    labels = get_label_set(label_set)
    n = len(labels)
    report = {
        "accuracy": accuracy(y_true, y_pred),
        "per_class_accuracy": {
            label: (None if np.isnan(a) else float(a))
            for label, a in zip(labels.labels, per_class_accuracy(y_true, y_pred, n), strict=True)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, n).tolist(),
        "num_samples": len(y_true),
    }
    if label_set in ("mikels8", "ekman6"):
        report["polarity_accuracy"] = polarity_accuracy(y_true, y_pred, label_set)
    return report
