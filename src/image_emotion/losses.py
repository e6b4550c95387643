"""Losses of seed 000 §4.3: L_cls (eq. 7), L_ed (eq. 8), L_multi (eq. 6) and L_p (eq. 10).

All take ``logits`` of shape ``(B, C)`` (the activations ``a_i`` of the last FC layer) and return the batch
mean, a scalar tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from image_emotion.errors import ConfigError


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Eq. 7, ``L_cls = -sum_i y_i log p_i`` with one-hot ``y`` from ``labels (B,)``."""
    return F.cross_entropy(logits, labels)


def distribution_loss(logits: Tensor, target: Tensor, form: str = "ce") -> Tensor:
    """Eq. 8, ``L_ed = -sum_i f(i) log p_i`` against ``target (B, C)`` (each row sums to 1).

    ``form="kl"`` subtracts the target's entropy, giving ``KL(f || p)`` (0 when ``p = f``); the gradient
    with respect to ``logits`` is the same (``p - f``), which is why the paper calls eq. 8 its KL loss.
    """
    log_p = F.log_softmax(logits, dim=-1)
    ce = -(target * log_p).sum(dim=-1)
    if form == "kl":
        ce = ce + (target * torch.log(target.clamp_min(1e-12))).sum(dim=-1)
    elif form != "ce":
        raise ConfigError(f"distribution loss form must be 'ce' or 'kl', got {form!r}")
    return ce.mean()


def multi_task_loss(logits: Tensor, labels: Tensor, target: Tensor, lam: float) -> Tensor:
    """Eq. 6, ``L_multi = (1 - λ) L_cls + λ L_ed``; λ = 0 is L_cls, λ = 1 is L_ed."""
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"λ (lambda) must be in [0, 1], got {lam}")
    return (1.0 - lam) * classification_loss(logits, labels) + lam * distribution_loss(logits, target)


def probability_loss(logits: Tensor, labels: Tensor, p_star: Tensor) -> Tensor:
    """Eq. 10, ``L_p = -sum_i y_i log p_i^θ`` with ``p_i^θ = softmax(p*² · a)_i``.

    ``p_star (B,)`` is each image's label probability (the dominant vote share): a less certain label
    flattens the softmax and so contributes less gradient (eq. 11's reading of it).
    """
    if p_star.shape != labels.shape:
        raise ConfigError(f"p_star must have one value per image {tuple(labels.shape)}, got {tuple(p_star.shape)}")
    return F.cross_entropy(logits * (p_star**2).unsqueeze(-1), labels)


LOSSES = ("cls", "ed", "multi", "p")


def emotion_loss(name: str, logits: Tensor, labels: Tensor, target: Tensor, p_star: Tensor, lam: float) -> Tensor:
    """The loss called ``name`` (``cls`` | ``ed`` | ``multi`` | ``p``), for training loops and sweeps."""
    if name == "cls":
        return classification_loss(logits, labels)
    if name == "ed":
        return distribution_loss(logits, target)
    if name == "multi":
        return multi_task_loss(logits, labels, target, lam)
    if name == "p":
        return probability_loss(logits, labels, p_star)
    raise ConfigError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
