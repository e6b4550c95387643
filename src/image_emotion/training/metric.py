"""Training the sentiment-vector network of seed 002 and embedding images with it.

- ``image_tensor``: the images of a prepared dataset, resized and normalised for the model ``(N, 3, S, S)``.
- ``train_metric_net``: SGD with the paper's two learning rates (``param_groups``) over class-balanced batches
  on ``(1 - ω)·CE(logits) + ω·E(feature)``, where ``E`` is the sentiment constraint (α1, α2 over D* on Mikels'
  wheel) or the plain triplet loss, on the sentiment vector (the paper) or the FC embedding (its ablation);
  ω = 0 is softmax alone, ω = 1 the metric loss alone. ``freeze_backbone`` trains only the 1×1 convolutions and
  the last layers (the CPU default; the paper fine-tunes everything).
- ``embed``: the model's outputs for many images, in batches, in inference mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.functional import to_tensor

from image_emotion.data.images import load_image
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.errors import ConfigError
from image_emotion.losses import sentiment_constraint_loss, triplet_loss
from image_emotion.models.metric import SentimentVectorNet
from image_emotion.training.metric_batches import class_balanced_batches

METRIC_LOSSES = ("sentiment", "triplet")
FEATURES = ("sentiment", "embedding")


@dataclass(frozen=True)
class MetricObjective:
    """What the metric part of the joint loss is: ``loss`` on ``feature``, weighted by ``omega``."""

    omega: float = 0.7  # the paper's ω
    loss: str = "sentiment"  # sentiment constraint | plain triplet
    feature: str = "sentiment"  # the sentiment vector (the paper) | the FC embedding
    sampling: str = "semi-hard"
    alpha: float = 0.2  # triplet margin
    alpha1: float = 0.2  # sentiment constraint margins
    alpha2: float = 0.1

    def __post_init__(self) -> None:
        if self.loss not in METRIC_LOSSES or self.feature not in FEATURES or not 0.0 <= self.omega <= 1.0:
            raise ConfigError(
                f"metric objective: loss in {METRIC_LOSSES}, feature in {FEATURES}, ω in [0, 1]; got "
                f"{self.loss!r}, {self.feature!r}, {self.omega}"
            )

    def __call__(self, out: dict[str, Tensor], labels: Tensor, label_set: str, generator: torch.Generator) -> Tensor:
        """The joint loss of one batch: ``out`` of the model, ``labels (B,)``."""
        ce = torch.nn.functional.cross_entropy(out["logits"], labels)
        if self.omega == 0.0:
            return ce
        feature = out[self.feature]
        if self.loss == "sentiment":
            metric = sentiment_constraint_loss(
                feature, labels, label_set, self.alpha1, self.alpha2, self.sampling, generator
            )
        else:
            metric = triplet_loss(feature, labels, self.alpha, self.sampling, generator)
        return (1.0 - self.omega) * ce + self.omega * metric


def image_tensor(data: PreparedDataset, size: int, mean: list[float], std: list[float]) -> Tensor:
    """Every image of ``data`` resized to ``size × size`` and normalised: ``(N, 3, size, size)``."""
    out = torch.empty(len(data.manifest), 3, size, size)
    for i, rel in enumerate(data.manifest["path"]):
        out[i] = to_tensor(load_image(data.root / rel).resize((size, size)))
    return (out - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def train_metric_net(
    model: SentimentVectorNet,
    images: Tensor,
    labels: Tensor,
    label_set: str,
    objective: MetricObjective,
    *,
    epochs: int,
    batch_size: int,
    min_per_class: int,
    lr_conv: float = 1e-4,
    lr_last: float = 1e-3,
    momentum: float = 0.9,
    freeze_backbone: bool = False,
    seed: int = 0,
) -> list[float]:
    """Train ``model`` in place on ``images (N, 3, S, S)`` with ``labels (N,)``; returns the mean loss of each epoch."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    for p in model.backbone.parameters():
        p.requires_grad_(not freeze_backbone)
    optimizer = torch.optim.SGD(model.param_groups(lr_conv, lr_last), momentum=momentum)
    losses = []
    for _ in range(epochs):
        model.train()
        if freeze_backbone:
            model.backbone.eval()  # its BatchNorm statistics stay the pretrained ones
        total, steps = 0.0, 0
        for index in class_balanced_batches(labels, batch_size, min_per_class, generator):
            loss = objective(model(images[index]), labels[index], label_set, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        losses.append(total / max(steps, 1))
    model.eval()
    return losses


def embed(model: SentimentVectorNet, images: Tensor, batch_size: int = 64) -> dict[str, np.ndarray]:
    """The model's outputs for ``images (N, 3, S, S)``: ``{"sentiment": (N, 680), "embedding": (N, E), ...}``."""
    model.eval()
    parts: dict[str, list[Tensor]] = {}
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            for key, value in model(images[start : start + batch_size]).items():
                parts.setdefault(key, []).append(value)
    return {key: torch.cat(values).numpy() for key, values in parts.items()}
