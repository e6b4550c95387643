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


def test_hand_computed_values():
    ls = [_log_softmax(r) for r in LOGITS.tolist()]
    l_cls = -(ls[0][0] + ls[1][2]) / 2
    l_ed = -sum(f * lp for f, lp in zip(TARGET[0].tolist(), ls[0], strict=True))
    l_ed += -sum(f * lp for f, lp in zip(TARGET[1].tolist(), ls[1], strict=True))
    l_ed /= 2
    assert classification_loss(LOGITS, LABELS).item() == pytest.approx(l_cls, rel=1e-6)
    assert distribution_loss(LOGITS, TARGET).item() == pytest.approx(l_ed, rel=1e-6)
    assert multi_task_loss(LOGITS, LABELS, TARGET, 0.3).item() == pytest.approx(0.7 * l_cls + 0.3 * l_ed, rel=1e-6)
    entropy = -sum(f * math.log(f) for row in TARGET.tolist() for f in row) / 2
    assert distribution_loss(LOGITS, TARGET, form="kl").item() == pytest.approx(l_ed - entropy, rel=1e-6)


def test_lambda_endpoints():
    assert torch.equal(multi_task_loss(LOGITS, LABELS, TARGET, 0.0), classification_loss(LOGITS, LABELS))
    assert torch.allclose(multi_task_loss(LOGITS, LABELS, TARGET, 1.0), distribution_loss(LOGITS, TARGET))
    with pytest.raises(ConfigError):
        multi_task_loss(LOGITS, LABELS, TARGET, 1.5)


def test_kl_is_zero_at_the_target():
    logits = torch.log(TARGET)
    assert distribution_loss(logits, TARGET, form="kl").item() == pytest.approx(0.0, abs=1e-6)


def test_probability_loss_hand_computed_and_p_star_one_is_cross_entropy():
    p_star = torch.tensor([0.5, 1.0])
    scaled = [[v * 0.25 for v in LOGITS[0].tolist()], LOGITS[1].tolist()]
    expected = -(_log_softmax(scaled[0])[0] + _log_softmax(scaled[1])[2]) / 2
    assert probability_loss(LOGITS, LABELS, p_star).item() == pytest.approx(expected, rel=1e-6)
    ones = torch.ones(2)
    assert torch.allclose(probability_loss(LOGITS, LABELS, ones), classification_loss(LOGITS, LABELS))
    with pytest.raises(ConfigError):
        probability_loss(LOGITS, LABELS, torch.ones(3))


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


def test_unknown_loss():
    with pytest.raises(ConfigError, match="unknown loss"):
        emotion_loss("focal", LOGITS, LABELS, TARGET, torch.ones(2), 0.5)
