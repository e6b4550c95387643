"""Paired bootstrap verdicts (``verdicts.py``) against scipy's own paired bootstrap and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from image_emotion.verdicts import FAILS, HOLDS, INCONCLUSIVE, interior_maximum, paired_bootstrap, verdict


def test_the_interval_agrees_with_scipys_paired_percentile_bootstrap():
    rng = np.random.default_rng(1)
    a = rng.random(300) < 0.70
    b = np.where(rng.random(300) < 0.8, a, ~a)  # paired: mostly the same images right
    ours = paired_bootstrap(a, b, resamples=20_000)
    theirs = stats.bootstrap(
        (a.astype(float), b.astype(float)), lambda x, y, axis: (x - y).mean(axis=axis) * 100, paired=True,
        n_resamples=20_000, method="percentile", random_state=np.random.default_rng(2), confidence_level=0.95,
    ).confidence_interval  # fmt: skip
    assert ours["difference"] == pytest.approx((a.mean() - b.mean()) * 100)
    assert ours["low"] == pytest.approx(theirs.low, abs=0.4) and ours["high"] == pytest.approx(theirs.high, abs=0.4)


def test_pairing_narrows_the_interval_of_models_right_on_the_same_images():
    rng = np.random.default_rng(3)
    hard = rng.random(200) < 0.5
    a = hard | (rng.random(200) < 0.1)  # b's right answers and a few more
    paired = paired_bootstrap(a, hard)
    unpaired_width = 2 * 1.96 * 100 * np.sqrt(a.var() / 200 + hard.var() / 200)
    assert paired["high"] - paired["low"] < 0.5 * unpaired_width
    assert verdict(paired) == HOLDS


def test_verdicts_by_where_the_interval_lies():
    assert verdict({"low": 0.5, "high": 3.0}) == HOLDS
    assert verdict({"low": -3.0, "high": -0.1}) == FAILS
    assert verdict({"low": -1.0, "high": 2.0}) == INCONCLUSIVE
    same = paired_bootstrap(np.ones(50, bool), np.ones(50, bool))
    assert (same["low"], same["high"], verdict(same)) == (0.0, 0.0, INCONCLUSIVE)  # a tie never holds


def test_the_lambda_claim_needs_both_ends_and_an_interior_maximum_beating_them():
    beats, ties = {"low": 1.0, "high": 5.0}, {"low": -2.0, "high": 3.0}
    grid = [0.0, 0.5, 1.0]
    assert interior_maximum(grid, 0.5, {0.0: beats, 1.0: beats}) == HOLDS
    assert interior_maximum(grid, 0.5, {0.0: beats, 1.0: ties}) == INCONCLUSIVE  # a flat curve near 1
    assert interior_maximum(grid, 1.0, {0.0: beats, 1.0: beats}) == FAILS
    assert interior_maximum([0.2, 0.5, 0.8], 0.5, {0.0: beats, 1.0: beats}) == INCONCLUSIVE  # ends not swept


def test_unpaired_vectors_are_refused():
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap(np.ones(3), np.ones(4))
