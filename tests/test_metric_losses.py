"""Seed 002's metric losses (sentiment constraint eq. 4 with D* = D / dis, triplet eq. 2, centre, joint eq. 7)
equal hand-computed values on tiny batches, vanish when every constraint holds or no triplet exists (and still
backpropagate), the random / hard / semi-hard samplers pick the expected triplets, and the class-balanced batches
hold every class, their minimum, and each image at most once per epoch.

Mikels-8 class ids: amusement 0, awe 1, contentment 2, excitement 3, anger 4, disgust 5, fear 6, sadness 7.
On the wheel contentment-awe-amusement-excitement-anger-fear-disgust-sadness, ``dis = 1 + steps`` from
amusement is: awe 2, contentment 3, excitement 2, anger 3, fear 4, disgust 5, sadness 4.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from image_emotion.errors import ConfigError
from image_emotion.losses import (
    SAMPLINGS,
    centre_loss,
    sample_sentiment_triplets,
    sample_triplets,
    sentiment_constraint_loss,
    sentiment_distances,
    triplet_loss,
)
from image_emotion.training.metric import MetricObjective
from image_emotion.training.metric_batches import class_balanced_batches

AMUSEMENT, AWE, CONTENTMENT, EXCITEMENT, ANGER, DISGUST, FEAR, SADNESS = range(8)

# Four unit vectors. Squared distances D: D01 = 0.2²+0.6² = 0.4, D02 = 1+1 = 2, D03 = 1.6²+0.8² = 3.2,
# D12 = 0.8²+0.4² = 0.8, D13 = 1.4²+1.4² = 3.92, D23 = 0.6²+1.8² = 3.6.
POINTS = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, -0.8]], dtype=torch.float64)
# amusement, amusement, awe, disgust: D* = D / dis gives D*01 = 0.4, D*02 = 2/2 = 1.0, D*03 = 3.2/5 = 0.64,
# D*12 = 0.8/2 = 0.4, D*13 = 3.92/5 = 0.784. Quadruples (0,1,2,3) and (1,0,2,3), the only ones (2, 3 lack positives):
#   (0,1,2,3): [0.4 - 1.0 + 0.2]+ = 0, [1.0 - 0.64 + 0.1]+ = 0.46
#   (1,0,2,3): [0.4 - 0.4 + 0.2]+ = 0.2, [0.4 - 0.784 + 0.1]+ = 0
# E_sml = (0.46 + 0.2) / 2 = 0.33 under every sampling (one candidate per role).
SENTI_LABELS = torch.tensor([AMUSEMENT, AMUSEMENT, AWE, DISGUST])
SENTI_VALUE = 0.33


def _on_circle(degrees: list[float]) -> torch.Tensor:
    t = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    return torch.stack([t.cos(), t.sin()], dim=1)


def test_sentiment_distances_are_d_over_dis():
    d = sentiment_distances(POINTS, SENTI_LABELS)
    expected = torch.tensor([0.4, 1.0, 0.64, 0.4, 0.784], dtype=torch.float64)  # D*01 D*02 D*03 D*12 D*13 above
    assert torch.allclose(torch.stack([d[0, 1], d[0, 2], d[0, 3], d[1, 2], d[1, 3]]), expected)


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_sentiment_constraint_hand_value(sampling):
    loss = sentiment_constraint_loss(
        POINTS, SENTI_LABELS, sampling=sampling, generator=torch.Generator().manual_seed(0)
    )
    assert loss.item() == pytest.approx(SENTI_VALUE, abs=1e-9)


def test_sentiment_constraint_normalises_embeddings():
    scaled = POINTS.clone()
    scaled[0] *= 3.0
    scaled[3] *= 0.5
    assert sentiment_constraint_loss(scaled, SENTI_LABELS).item() == pytest.approx(SENTI_VALUE, abs=1e-9)


def test_sentiment_constraint_margins_change_the_value():
    # α2 = 0.5: [1.0 - 0.64 + 0.5]+ = 0.86 and [0.4 - 0.784 + 0.5]+ = 0.116; with 0 and 0.2: (0.86+0.2+0.116)/2 = 0.588
    assert sentiment_constraint_loss(POINTS, SENTI_LABELS, alpha2=0.5).item() == pytest.approx(0.588, abs=1e-9)
    # α1 = 0.7: [0.4 - 1.0 + 0.7]+ = 0.1 and [0.4 - 0.4 + 0.7]+ = 0.7; with 0.46 and 0: (0.1+0.46+0.7)/2 = 0.63
    assert sentiment_constraint_loss(POINTS, SENTI_LABELS, alpha1=0.7).item() == pytest.approx(0.63, abs=1e-9)


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_sentiment_constraint_zero_when_all_constraints_hold(sampling):
    # amusement x2 at 0°, awe x2 at 60°, disgust x2 at 180°. Amusement anchors: D*(a,p) = 0, D*(a,awe) = 1/2 = 0.5,
    # D*(a,disgust) = 4/5 = 0.8: 0 - 0.5 + 0.2 < 0 and 0.5 - 0.8 + 0.1 = -0.2 < 0. Awe anchors: D*(a,amusement) =
    # 0.5, D*(a,disgust) = 3/4 = 0.75 (awe-disgust 3 steps): 0.5 - 0.75 + 0.1 = -0.15 < 0. Disgust: no related image.
    x = _on_circle([0, 0, 60, 60, 180, 180]).requires_grad_()
    labels = torch.tensor([AMUSEMENT, AMUSEMENT, AWE, AWE, DISGUST, DISGUST])
    g = torch.Generator().manual_seed(0)
    assert sample_sentiment_triplets(x, labels, sampling=sampling, generator=g).anchor.tolist() == [0, 1, 2, 3]
    loss = sentiment_constraint_loss(x, labels, sampling=sampling, generator=g)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize(
    "labels",
    [
        [AWE, AWE, AWE, AWE],  # one class
        [AMUSEMENT, AMUSEMENT, DISGUST, DISGUST],  # no related pair
        [AMUSEMENT, AWE, DISGUST, FEAR],  # no positive pair
        [AMUSEMENT, AMUSEMENT, AWE, AWE],  # no negative
    ],
)
@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_no_valid_quadruple_gives_zero_that_backpropagates(labels, sampling):
    x = POINTS.clone().requires_grad_()
    loss = sentiment_constraint_loss(x, torch.tensor(labels), sampling=sampling)
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_triplet_loss_without_triplet_is_zero_that_backpropagates():
    x = POINTS.clone().requires_grad_()
    loss = triplet_loss(x, torch.tensor([2, 2, 2, 2]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_gradients_finite_and_correct_when_violated():
    x = POINTS.clone().requires_grad_()
    sentiment_constraint_loss(x, SENTI_LABELS).backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum().item() > 0.1
    # every role has one candidate, so the loss is a fixed smooth function here: autograd = finite differences
    assert torch.autograd.gradcheck(
        lambda e: sentiment_constraint_loss(e, SENTI_LABELS), (POINTS.clone().requires_grad_(),)
    )
    assert torch.autograd.gradcheck(
        lambda e: triplet_loss(e, torch.tensor([0, 0, 1, 1]), sampling="hard"), (POINTS.clone().requires_grad_(),)
    )


# A batch for the sentiment samplers, on the unit circle (D = 2 - 2 cos Δ), anchor 0 = amusement at 0°:
#   1 amusement 37°         D* = 2 - 2cos37°            = 0.4027   (positive)
#   2 amusement 53°         D* = 2 - 2cos53°            = 0.7964   (positive, the farthest)
#   3 awe 85°               D* = (2 - 2cos85°) / 2      = 0.9128   (related, the farthest)
#   4 contentment -37°      D* = 0.4027 / 3             = 0.1342   (related, the nearest)
#   5 excitement, cos = 0.3 D* = (2 - 0.6) / 2          = 0.7      (related)
#   6 anger, cos = 0.1      D* = (2 - 0.2) / 3          = 0.6      (negative)
#   7 sadness -90°          D* = 2 / 4                  = 0.5      (negative, the nearest)
#   8 fear 120°             D* = 3 / 4                  = 0.75     (negative)
SAMPLER_X = _on_circle([0, 37, 53, 85, -37, -math.degrees(math.acos(0.3)), -math.degrees(math.acos(0.1)), -90, 120])
SAMPLER_Y = torch.tensor([AMUSEMENT, AMUSEMENT, AMUSEMENT, AWE, CONTENTMENT, EXCITEMENT, ANGER, SADNESS, FEAR])


def _rows_of_anchor(t, anchor: int) -> list[tuple[int, ...]]:
    rows = zip(*(f.tolist() for f in t), strict=True)
    return [row[1:] for row in rows if row[0] == anchor]


def test_sentiment_hard_sampler():
    t = sample_sentiment_triplets(SAMPLER_X, SAMPLER_Y, sampling="hard")
    # one row per anchor: farthest positive 2, nearest related 4 (first constraint), nearest negative 7,
    # farthest related 3 (second constraint)
    assert _rows_of_anchor(t, 0) == [(2, 4, 7, 3)]


def test_sentiment_semi_hard_sampler():
    t = sample_sentiment_triplets(
        SAMPLER_X, SAMPLER_Y, sampling="semi-hard", generator=torch.Generator().manual_seed(0)
    )
    # p=1: related band (0.4027, 0.6027) is empty -> nearest related farther than 0.4027: 5 (0.7);
    #      negative band (0.7, 0.8) holds only 8 (0.75) -> 8.
    # p=2: related band (0.7964, 0.9964) holds only 3 (0.9128) -> 3;
    #      no negative farther than 0.9128 -> the farthest negative, 8 (0.75).
    assert _rows_of_anchor(t, 0) == [(1, 5, 8, 5), (2, 3, 8, 3)]


def test_sentiment_random_sampler_draws_among_violated():
    picks = []
    for seed in range(40):
        t = sample_sentiment_triplets(
            SAMPLER_X, SAMPLER_Y, sampling="random", generator=torch.Generator().manual_seed(seed)
        )
        picks.append(_rows_of_anchor(t, 0))
    # p=1: only 4 (0.1342) violates D* < 0.4027 + 0.2; then no negative violates D* < 0.1342 + 0.1 -> any of 6, 7, 8
    assert {rows[0][:2] for rows in picks} == {(1, 4)}
    assert {rows[0][2] for rows in picks} == {6, 7, 8}
    # p=2: every related image violates D* < 0.7964 + 0.2
    assert {rows[1][1] for rows in picks} == {3, 4, 5}


# Plain triplets with POINTS and labels A A B B (D above):
#   hard:      a0 p1 n2: [0.4 - 2 + 0.2]+ = 0; a1 p0 n2: [0.4 - 0.8 + 0.2]+ = 0; a2 p3 n1: 3.6 - 0.8 + 0.2 = 3.0;
#              a3 p2 n0: 3.6 - 3.2 + 0.2 = 0.6 -> (3.0 + 0.6) / 4 = 0.9
#   semi-hard: a0 p1: no negative in (0.4, 0.6), nearest farther n2 -> 0; a1 p0: nearest farther n2 (0.8) -> 0;
#              a2 p3: no negative farther than 3.6 -> farthest n0 (2.0): 3.6 - 2.0 + 0.2 = 1.8;
#              a3 p2: none in (3.6, 3.8), nearest farther n1 (3.92) -> 0  => 1.8 / 4 = 0.45
#   random:    a0, a1: nothing violates -> 0; a2 p3: n0 or n1 (1.8 or 3.0); a3 p2: only n0 violates -> 0.6
#              => (1.8 + 0.6) / 4 = 0.6 or (3.0 + 0.6) / 4 = 0.9
PLAIN_LABELS = torch.tensor([0, 0, 1, 1])


def test_triplet_loss_hand_values():
    assert triplet_loss(POINTS, PLAIN_LABELS, sampling="hard").item() == pytest.approx(0.9, abs=1e-9)
    assert triplet_loss(POINTS, PLAIN_LABELS, sampling="semi-hard").item() == pytest.approx(0.45, abs=1e-9)
    values = {
        round(
            triplet_loss(POINTS, PLAIN_LABELS, sampling="random", generator=torch.Generator().manual_seed(s)).item(), 9
        )
        for s in range(30)
    }
    assert values == {0.6, 0.9}
    t = sample_triplets(POINTS, PLAIN_LABELS, sampling="semi-hard")
    assert list(zip(*(f.tolist() for f in t), strict=True)) == [(0, 1, 2), (1, 0, 2), (2, 3, 0), (3, 2, 1)]


def test_triplet_loss_zero_with_margin():
    x = _on_circle([0, 10, 180, 170])  # D(a,p) = 2 - 2cos10° = 0.030, D(a,n) >= 2 - 2cos170° = 3.970
    assert triplet_loss(x, PLAIN_LABELS, sampling="hard").item() == 0.0


def test_plain_samplers_on_hand_batch():
    # anchor 0° and positive 60° (D = 1) of class 0; negatives of class 1 at 50° (D = 0.714, closer than the
    # positive), 70° (1.316) and 75° (1.482) (both within α = 0.5), 120° (D = 3, beyond the margin).
    x = _on_circle([0, 60, 50, 70, 75, 120])
    labels = torch.tensor([0, 0, 1, 1, 1, 1])

    def picks(sampling: str) -> set[int]:
        out = set()
        for seed in range(30):
            t = sample_triplets(x, labels, alpha=0.5, sampling=sampling, generator=torch.Generator().manual_seed(seed))
            out |= {n for a, p, n in zip(*(f.tolist() for f in t), strict=True) if (a, p) == (0, 1)}
        return out

    assert picks("hard") == {2}
    assert picks("semi-hard") == {3, 4}
    assert picks("random") == {2, 3, 4}  # the violated ones: D < 1 + 0.5


def test_centre_loss_hand_value():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]], requires_grad=True)
    centres = torch.tensor([[0.0, 0.0], [3.0, 3.0]])
    # ½(1 + 4) = 2.5, ½(0 + 1) = 0.5, ½(0 + 1) = 0.5 -> mean 3.5 / 3
    loss = centre_loss(x, torch.tensor([0, 1, 0]), centres)
    assert loss.item() == pytest.approx(3.5 / 3, rel=1e-6)
    loss.backward()
    assert torch.allclose(x.grad, torch.tensor([[1.0, 2.0], [0.0, 1.0], [0.0, 1.0]]) / 3)  # (x - c) / B


@pytest.mark.parametrize(
    ("omega", "margins", "constraint"),
    [(0.7, {}, SENTI_VALUE), (0.0, {}, 0.0), (1.0, {}, SENTI_VALUE), (0.4, {"alpha2": 0.5}, 0.588)],
)
def test_the_training_objective_is_eq7_weighted_sum(omega, margins, constraint):
    """The objective every seed 002 training calls (``MetricObjective``): (1 - ω) softmax + ω sentiment constraint,
    against the constraint's hand-computed values above (α2 = 0.5 gives 0.588) and PyTorch's cross-entropy."""
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0, 0.3, -0.2, 0.1, 0.0]] * 2 + [[0.0] * 8] * 2, dtype=torch.float64)
    logits[2, 1] = 1.5
    logits[3, 5] = -0.5
    ce = F.cross_entropy(logits, SENTI_LABELS).item()
    objective = MetricObjective(omega=omega, loss="sentiment", feature="sentiment", sampling="semi-hard", **margins)
    out = {"logits": logits, "sentiment": POINTS}
    value = objective(out, SENTI_LABELS, "mikels8", torch.Generator().manual_seed(0)).item()
    assert value == pytest.approx((1 - omega) * ce + omega * constraint, abs=1e-9)
    assert objective.outputs() == (("logits",) if omega == 0.0 else ("logits", "sentiment"))


def test_an_objective_outside_the_papers_range_is_refused():
    for omega in (-0.1, 1.2):
        with pytest.raises(ConfigError, match=r"ω in \[0, 1\]"):
            MetricObjective(omega=omega)


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="unknown triplet sampling 'hardest'"):
        sentiment_constraint_loss(POINTS, SENTI_LABELS, sampling="hardest")
    with pytest.raises(ConfigError, match="margin alpha1 must be > 0"):
        sentiment_constraint_loss(POINTS, SENTI_LABELS, alpha1=0.0)
    with pytest.raises(ConfigError, match="margin alpha must be > 0"):
        triplet_loss(POINTS, PLAIN_LABELS, alpha=-0.2)
    with pytest.raises(ConfigError, match=r"class ids in 0\.\.7"):
        sentiment_constraint_loss(POINTS, torch.tensor([0, 0, 1, 8]))
    with pytest.raises(ConfigError, match="labels must have shape"):
        triplet_loss(POINTS, torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="unknown label set"):
        sentiment_constraint_loss(POINTS, SENTI_LABELS, label_set="plutchik")
    with pytest.raises(ConfigError, match="centres must have shape"):
        centre_loss(POINTS, PLAIN_LABELS, torch.zeros(2, 3))


# --- class-balanced batches ---------------------------------------------------------------------------------


def _shuffled_labels(counts: list[int], seed: int = 0) -> torch.Tensor:
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def _check_epoch(batches, labels, batch_size, minimum):
    seen = torch.cat(batches).tolist()
    assert len(seen) == len(set(seen))  # each index at most once per epoch
    for b in batches:
        assert len(b) <= batch_size
        counts = torch.bincount(labels[b], minlength=len(minimum)).tolist()
        assert all(c >= m for c, m in zip(counts, minimum, strict=True)), counts
    return seen


def test_balanced_batches_cover_balanced_data():
    labels = _shuffled_labels([30, 30, 30])
    batches = class_balanced_batches(labels, batch_size=16, min_per_class=4, generator=torch.Generator().manual_seed(1))
    # ceil(90 / 16) = 6 batches, 3 x 4 reserved + 18 remaining images spread 3 a batch -> 6 batches of 15
    assert [len(b) for b in batches] == [15] * 6
    seen = _check_epoch(batches, labels, 16, [4, 4, 4])
    assert sorted(seen) == list(range(90))


def test_balanced_batches_imbalanced_and_scarce_class():
    labels = _shuffled_labels([40, 20, 9, 3])
    batches = class_balanced_batches(labels, batch_size=24, min_per_class=4, generator=torch.Generator().manual_seed(2))
    # 9 // 4 = 2 batches; reserved 4 + 4 + 4 + (3 // 2 = 1) = 13 a batch, 11 filled from the other 46 images
    assert [len(b) for b in batches] == [24, 24]
    # the class with 3 (< 4) images is in every batch, once at least
    _check_epoch(batches, labels, 24, [4, 4, 4, 1])


def test_balanced_batches_depend_on_the_generator():
    labels = _shuffled_labels([12, 12])
    a = class_balanced_batches(labels, 8, 2, torch.Generator().manual_seed(0))
    b = class_balanced_batches(labels, 8, 2, torch.Generator().manual_seed(0))
    c = class_balanced_batches(labels, 8, 2, torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_balanced_batches_refuse_too_small_batch():
    with pytest.raises(ConfigError, match="cannot hold 8 images of each of 8 classes; use at least 64"):
        class_balanced_batches(_shuffled_labels([10] * 8), batch_size=32, min_per_class=8)
