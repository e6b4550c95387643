"""Confidence that means what it says: temperature scaling fitted on validation, and the expected calibration error.

None of the three papers reports calibration; a served model's ``confidence`` is read as a probability, so the
classifier's is measured and corrected here (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017):

- ``fit_temperature(logits (N, C), labels (N,))``: the ``T > 0`` that minimises the NLL of ``softmax(logits / T)``
  on the *validation* split (a convex problem in ``log T``; solved by golden-section search, deterministic).
  Dividing logits by ``T`` never changes an argmax: accuracy is untouched.
- ``expected_calibration_error(probabilities (N, C), labels (N,), bins)``: the images binned by confidence (the top
  probability; ``bins`` equal-width bins over (0, 1]), ``Σ_b (n_b / N) · |accuracy_b − confidence_b|``.
- ``reliability(...)``: each bin's count, mean confidence and accuracy (the reliability diagram's points).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ECE_BINS = 15  # Guo et al.'s choice
LOG_T_RANGE = (math.log(0.05), math.log(20.0))  # temperatures searched: 0.05 .. 20


def nll(logits: Tensor, labels: Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, labels.long()))


def fit_temperature(logits: Tensor, labels: Tensor, steps: int = 80) -> float:
    """The temperature minimising ``nll`` over ``LOG_T_RANGE`` (1.0 for an empty split)."""
    if len(labels) == 0:
        return 1.0
    lo, hi = LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(steps):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return math.exp((lo + hi) / 2)


def reliability(probabilities: Tensor, labels: Tensor, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per confidence bin ``(lower, upper]``: ``count``, mean ``confidence``, ``accuracy`` (empty bins: count 0)."""
    confidence, predicted = probabilities.double().max(dim=1)
    correct = (predicted == labels.long()).double()
    rows = []
    for b in range(bins):
        lower, upper = b / bins, (b + 1) / bins
        inside = (confidence > lower) & (confidence <= upper)
        n = int(inside.sum())
        rows.append(
            {
                "lower": lower,
                "upper": upper,
                "count": n,
                "confidence": float(confidence[inside].mean()) if n else 0.0,
                "accuracy": float(correct[inside].mean()) if n else 0.0,
            }
        )
    return rows


def expected_calibration_error(probabilities: Tensor, labels: Tensor, bins: int = ECE_BINS) -> float:
    """``Σ_b (n_b / N) · |accuracy_b − confidence_b|`` over ``reliability``'s bins (0.0 for no images)."""
    return calibration_error(reliability(probabilities, labels, bins))


def calibration_error(rows: list[dict[str, float]]) -> float:
    """The expected calibration error of ``reliability``'s bins (0.0 when they hold no image)."""
    total = sum(r["count"] for r in rows)
    if total == 0:
        return 0.0
    return sum(r["count"] / total * abs(r["accuracy"] - r["confidence"]) for r in rows)
