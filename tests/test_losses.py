"""The losses of seed 000 §4.3 (L_cls, L_ed and its KL form, L_multi, L_p) equal their hand-computed values on a
small batch, have the paper's gradient, stay finite on one-hot targets, and refuse bad λ, p* and names."""

import math

import pytest
import torch

from image_emotion.errors import ConfigError
from image_emotion.losses import (
    classification_loss,
    distribution_loss,
    emotion_loss,
    multi_task_loss,
    probability_loss,
)

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
LABELS = torch.tensor([0, 2])
TARGET = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])


def _log_softmax(row):
    z = math.log(sum(math.exp(v) for v in row))
    return [v - z for v in row]


def _hand_l_cls_and_l_ed():
    """Eq. 7 and eq. 8 on LOGITS/LABELS/TARGET with Python floats."""
    ls = [_log_softmax(r) for r in LOGITS.tolist()]
    l_cls = -(ls[0][0] + ls[1][2]) / 2
    l_ed = -sum(f * lp for f, lp in zip(TARGET[0].tolist(), ls[0], strict=True))
    l_ed += -sum(f * lp for f, lp in zip(TARGET[1].tolist(), ls[1], strict=True))
    return l_cls, l_ed / 2


def _hand_l_p(p_star):
    """Eq. 10: cross-entropy of softmax(p*² · a)."""
    scaled = [[v * p**2 for v in row] for row, p in zip(LOGITS.tolist(), p_star, strict=True)]
    return -(_log_softmax(scaled[0])[0] + _log_softmax(scaled[1])[2]) / 2


def test_hand_computed_values():
    l_cls, l_ed = _hand_l_cls_and_l_ed()
    assert classification_loss(LOGITS, LABELS).item() == pytest.approx(l_cls, rel=1e-6)
    assert distribution_loss(LOGITS, TARGET).item() == pytest.approx(l_ed, rel=1e-6)
    assert multi_task_loss(LOGITS, LABELS, TARGET, 0.3).item() == pytest.approx(0.7 * l_cls + 0.3 * l_ed, rel=1e-6)
    entropy = -sum(f * math.log(f) for row in TARGET.tolist() for f in row) / 2
    assert distribution_loss(LOGITS, TARGET, form="kl").item() == pytest.approx(l_ed - entropy, rel=1e-6)


def test_lambda_endpoints():
    l_cls, l_ed = _hand_l_cls_and_l_ed()
    assert multi_task_loss(LOGITS, LABELS, TARGET, 0.0).item() == pytest.approx(l_cls, rel=1e-6)
    assert multi_task_loss(LOGITS, LABELS, TARGET, 1.0).item() == pytest.approx(l_ed, rel=1e-6)
    for lam in (1.5, -0.1):
        with pytest.raises(ConfigError, match=rf"must be in \[0, 1\], got {lam}"):
            multi_task_loss(LOGITS, LABELS, TARGET, lam)


def test_kl_is_zero_at_the_target():
    logits = torch.log(TARGET)
    assert distribution_loss(logits, TARGET, form="kl").item() == pytest.approx(0.0, abs=1e-6)


def test_probability_loss_hand_computed_and_p_star_one_is_cross_entropy():
    p_star = torch.tensor([0.5, 1.0])
    # p* = 0.5 scales the first row's logits by 0.25; p* = 1 leaves the second as it is
    assert probability_loss(LOGITS, LABELS, p_star).item() == pytest.approx(_hand_l_p([0.5, 1.0]), rel=1e-6)
    l_cls, _ = _hand_l_cls_and_l_ed()
    assert probability_loss(LOGITS, LABELS, torch.ones(2)).item() == pytest.approx(l_cls, rel=1e-6)
    with pytest.raises(ConfigError, match=r"one value per image \(2,\), got \(3,\)"):
        probability_loss(LOGITS, LABELS, torch.ones(3))


def test_emotion_loss_dispatches_each_name_to_its_equation():
    l_cls, l_ed = _hand_l_cls_and_l_ed()
    expected = {"cls": l_cls, "ed": l_ed, "multi": 0.7 * l_cls + 0.3 * l_ed, "p": _hand_l_p([0.5, 0.8])}
    assert len(set(expected.values())) == 4  # four different numbers, so a swapped name cannot pass
    p_star = torch.tensor([0.5, 0.8])
    for name, value in expected.items():
        assert emotion_loss(name, LOGITS, LABELS, TARGET, p_star, lam=0.3).item() == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize("name", ["cls", "ed", "multi", "p"])
def test_gradients_are_finite_and_nonzero(name):
    logits = (torch.randn(4, 8, generator=torch.Generator().manual_seed(0)) * 30).requires_grad_()
    labels = torch.tensor([0, 3, 7, 1])
    target = torch.softmax(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    target[0] = torch.tensor([1.0] + [0.0] * 7)  # a one-hot row: log(0) must not leak NaN
    loss = emotion_loss(name, logits, labels, target, torch.full((4,), 0.6), lam=0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_gradient_of_multi_task_is_p_minus_mixed_target():
    # eq. 9 of seed 000 (with the sign fixed): dL/da = p - (1-λ) y - λ f, per sample, over the batch size
    logits = LOGITS.clone().requires_grad_()
    multi_task_loss(logits, LABELS, TARGET, 0.4).backward()
    y = torch.nn.functional.one_hot(LABELS, 3).float()
    expected = (torch.softmax(LOGITS, 1) - 0.6 * y - 0.4 * TARGET) / 2
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_unknown_loss_and_form():
    with pytest.raises(ConfigError, match="unknown loss 'focal'"):
        emotion_loss("focal", LOGITS, LABELS, TARGET, torch.ones(2), 0.5)
    with pytest.raises(ConfigError, match="form must be 'ce' or 'kl', got 'js'"):
        distribution_loss(LOGITS, TARGET, form="js")
