"""Training the multi-level head on cached features (the cheap part: the λ sweep, ablations, transfer).

``HeadData`` holds the cached features of some images with their labels, emotion distributions and label
probabilities; ``train_head`` runs SGD (the paper's lr 1e-3, batch 128) with one of the losses of seed 000.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from image_emotion.errors import ConfigError
from image_emotion.losses import emotion_loss
from image_emotion.models.multilevel import MultiLevelHead

HEAD_DEFAULTS = {
    "hidden": 512,
    "dropout": 0.5,
    "lr": 0.001,
    "momentum": 0.9,
    "weight_decay": 0.0005,
    "batch_size": 128,
    "epochs": 100,
    "seed": 0,
}


@dataclass
class HeadData:
    """Features of N images (``global`` ``(N, Dg)``, ``emotional``/``object`` ``(N, K, Dl)``) and targets."""

    features: dict[str, Tensor]
    labels: Tensor  # (N,)
    distributions: Tensor  # (N, C)
    p_star: Tensor  # (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, index: Tensor | np.ndarray) -> HeadData:
        idx = torch.as_tensor(index, dtype=torch.long)
        return HeadData(
            {k: v[idx] for k, v in self.features.items()}, self.labels[idx], self.distributions[idx], self.p_star[idx]
        )

    def with_targets(self, labels: Tensor, distributions: Tensor, p_star: Tensor) -> HeadData:
        return HeadData(self.features, labels, distributions, p_star)


def head_params(section: dict[str, Any] | None) -> dict[str, Any]:
    """Head hyper-parameters over the defaults (unknown keys ignored: the section holds the sweep too)."""
    section = section or {}
    return {k: section.get(k, v) for k, v in HEAD_DEFAULTS.items()}


def train_head(
    data: HeadData,
    dims: tuple[int, int, int],
    num_classes: int,
    mode: str,
    loss: str,
    lam: float,
    hp: dict[str, Any],
) -> MultiLevelHead:
    """Train a fresh head on ``data`` with loss ``loss`` (and ``lam`` for L_multi). ``dims``: (Dg, Dl, K)."""
    if len(data) == 0:
        raise ConfigError("no training images for the classifier head; check the splits in the manifest")
    torch.manual_seed(int(hp["seed"]))
    dg, dl, k = dims
    head = MultiLevelHead(dg, dl, k, num_classes, mode=mode, hidden=int(hp["hidden"]), dropout=float(hp["dropout"]))
    return fit(head, data, hp, lambda logits, b: emotion_loss(loss, logits, b.labels, b.distributions, b.p_star, lam))


def fit(head: MultiLevelHead, data: HeadData, hp: dict[str, Any], loss_fn) -> MultiLevelHead:
    """SGD over seeded shuffled mini-batches; ``loss_fn(logits (B, C), batch: HeadData) -> scalar``."""
    optimizer = torch.optim.SGD(
        head.parameters(), lr=float(hp["lr"]), momentum=float(hp["momentum"]), weight_decay=float(hp["weight_decay"])
    )
    generator = torch.Generator().manual_seed(int(hp["seed"]))
    n, batch = len(data), int(hp["batch_size"])
    head.train()
    for _ in range(int(hp["epochs"])):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch):
            b = data.select(order[start : start + batch])
            value = loss_fn(head(b.features), b)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
    return head.eval()


def predict(head: MultiLevelHead, features: dict[str, Tensor]) -> Tensor:
    """Class probabilities ``(N, C)``."""
    with torch.inference_mode():
        return head.eval()(features).softmax(-1)
