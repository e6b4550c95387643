"""Verdicts with uncertainty: a claim that one model beats another holds only when a paired bootstrap interval
over the test images excludes zero.

``paired_bootstrap(correct_a (N,), correct_b (N,))``: the accuracy difference a − b in points over the same N
images, and its percentile interval from ``resamples`` resamplings of the images (the same images for both
models in every resample: the pairing removes the images' own difficulty from the spread). ``verdict``: "holds"
when the interval lies above zero, "does not hold" when below, "inconclusive" when it contains zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RESAMPLES = 4000
LEVEL = 0.95
HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


def paired_bootstrap(
    correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> dict[str, Any]:
    """``{"difference", "low", "high"}`` in points (a − b), ``images``, ``resamples``, ``level``."""
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired correctness vectors of one length, got {a.shape} and {b.shape}")
    n = len(a)
    if n == 0:
        return {"difference": None, "low": None, "high": None, "images": 0, "resamples": 0, "level": level}
    rows = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    differences = (a[rows] - b[rows]).mean(axis=1) * 100
    low, high = np.quantile(differences, [(1 - level) / 2, (1 + level) / 2])
    return {
        "difference": float((a - b).mean() * 100),
        "low": float(low),
        "high": float(high),
        "images": n,
        "resamples": resamples,
        "level": level,
    }


def verdict(interval: dict[str, Any]) -> str:
    """``holds`` / ``does not hold`` / ``inconclusive`` by where ``interval`` lies relative to zero."""
    if interval.get("low") is None:
        return INCONCLUSIVE
    if interval["low"] > 0:
        return HOLDS
    if interval["high"] < 0:
        return FAILS
    return INCONCLUSIVE


def interior_maximum(lambdas: list[float], best: float, versus_ends: dict[float, dict[str, Any]]) -> str:
    """The λ claim: holds when the grid spans both ends (0 and 1), λ* is inside, and λ*'s validation accuracy beats
    each end's with an interval above zero; does not hold when λ* is an end; inconclusive otherwise."""
    if 0.0 not in lambdas or 1.0 not in lambdas:
        return INCONCLUSIVE  # without both ends an interior maximum cannot be shown
    if best in (0.0, 1.0):
        return FAILS
    return HOLDS if all(verdict(versus_ends[end]) == HOLDS for end in (0.0, 1.0)) else INCONCLUSIVE
