"""Seeded, stratified splits and folds: the same labels and seed always give the same assignment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from image_emotion.errors import ConfigError


def _per_class(labels: Sequence[str], seed: int) -> dict[str, np.ndarray]:
    """Shuffled row indices of each class (classes in sorted order, so the result is seed-stable)."""
    rng = np.random.default_rng(seed)
    arr = np.asarray(labels)
    return {c: rng.permutation(np.flatnonzero(arr == c)) for c in sorted(set(labels))}


def _largest_remainder(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` items into counts proportional to ``fractions`` that add up to ``n``."""
    raw = np.asarray(fractions) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def stratified_split(labels: Sequence[str], fractions: Mapping[str, float], seed: int) -> list[str]:
    """Assign each row a split name (e.g. train/val/test) so every class follows ``fractions``."""
    names, fracs = list(fractions), [float(f) for f in fractions.values()]
    if any(f < 0 for f in fracs) or abs(sum(fracs) - 1.0) > 1e-6:
        raise ConfigError(f"prepare.split fractions must be >= 0 and sum to 1, got {dict(fractions)}")
    out = [""] * len(labels)
    for idx in _per_class(labels, seed).values():
        start = 0
        for name, count in zip(names, _largest_remainder(len(idx), fracs), strict=True):
            for i in idx[start : start + count]:
                out[i] = name
            start += count
    return out


def stratified_folds(labels: Sequence[str], k: int, seed: int) -> list[int]:
    """Assign each row a fold 0..k-1; each class is dealt round-robin so folds differ by at most 1 per class."""
    if k < 2:
        raise ConfigError(f"prepare.folds must be >= 2, got {k}")
    out = [-1] * len(labels)
    offset = 0
    for idx in _per_class(labels, seed).values():
        for j, i in enumerate(idx):
            out[i] = (offset + j) % k
        offset = (offset + len(idx)) % k  # start the next class where this one stopped: folds stay balanced
    return out
