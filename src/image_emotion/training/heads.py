"""Training the multi-level classifier head on cached features (the cheap part: λ sweep, ablations, transfer).

``HeadData`` holds the cached features of some images with their labels, emotion distributions and label
probabilities; ``train_head`` runs SGD (the paper's lr 1e-3, batch 128) with one of the losses of seed 000;
``train_lambda_heads`` trains the heads of a whole λ sweep in one pass (stacked weights under ``torch.func``):
the same initial weights, batches and dropout masks as separate ``train_head`` calls, so the same heads.
``load_head_data`` reads a prepared dataset with its feature cache, row-aligned: the features stay on disk
(``feature_store``) and every loop reads one mini-batch of them at a time, so memory does not grow with the
dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from image_emotion.config import EmotionsConfig, HeadTraining
from image_emotion.data.emotions import BINARY, get_label_set
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.errors import ConfigError
from image_emotion.losses import check_lambda, classification_loss, distribution_loss, emotion_loss
from image_emotion.models.multilevel import MultiLevelHead
from image_emotion.training.feature_store import FeatureRows, FeatureStore
from image_emotion.training.progress import progress

HEAD_KEYS = ("global", "emotional", "object")  # the features a head reads
CPU = torch.device("cpu")
PREDICT_BATCH = 256  # images per forward pass when predicting: bounds the features read at once (~6 MB)


@dataclass
class HeadData:
    """Features of N images (``global`` ``(N, Dg)``, ``emotional``/``object`` ``(N, K, Dl)``, maybe
    ``emotional_boxes`` ``(N, K, 4)``) and targets. ``features``: tensors in memory, or rows of a feature store
    read by ``tensors`` (a mini-batch at a time)."""

    features: dict[str, Tensor] | FeatureRows
    labels: Tensor  # (N,)
    distributions: Tensor  # (N, C)
    p_star: Tensor  # (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, index: Tensor | np.ndarray) -> HeadData:
        idx = torch.as_tensor(index, dtype=torch.long)
        features = (
            self.features.select(idx.numpy())
            if isinstance(self.features, FeatureRows)
            else {k: v[idx] for k, v in self.features.items()}
        )
        return HeadData(features, self.labels[idx], self.distributions[idx], self.p_star[idx])

    def tensors(self, keys: tuple[str, ...] = HEAD_KEYS) -> dict[str, Tensor]:
        """The features ``keys`` of these images as tensors (read from the store when they are on disk)."""
        if isinstance(self.features, FeatureRows):
            return self.features.load(keys)
        return {k: self.features[k] for k in keys if k in self.features}

    def with_targets(self, labels: Tensor, distributions: Tensor, p_star: Tensor) -> HeadData:
        return HeadData(self.features, labels, distributions, p_star)

    def on(self, device: torch.device) -> HeadData:
        """These images' head features read into tensors, and the targets, on ``device`` (one mini-batch)."""
        features = {k: v.to(device) for k, v in self.tensors().items()}
        return HeadData(features, self.labels.to(device), self.distributions.to(device), self.p_star.to(device))


def train_head(
    data: HeadData,
    dims: tuple[int, int, int],
    num_classes: int,
    mode: str,
    loss: str,
    lam: float,
    hp: HeadTraining,
    hidden: int,
    device: torch.device = CPU,
) -> MultiLevelHead:
    """Train a fresh head on ``data`` with loss ``loss`` (and ``lam`` for L_multi) on ``device``; returned on
    the CPU. ``dims``: (Dg, Dl, K)."""
    if len(data) == 0:
        raise ConfigError("no training images for the classifier head; check the splits in the manifest")
    torch.manual_seed(hp.seed)
    dg, dl, k = dims
    head = MultiLevelHead(dg, dl, k, num_classes, mode=mode, hidden=hidden, dropout=hp.dropout)

    def loss_fn(logits: Tensor, b: HeadData) -> Tensor:
        return emotion_loss(loss, logits, b.labels, b.distributions, b.p_star, lam)

    return fit(head, data, hp, loss_fn, device)


def train_lambda_heads(
    data: HeadData,
    dims: tuple[int, int, int],
    num_classes: int,
    mode: str,
    lams: list[float],
    hp: HeadTraining,
    hidden: int,
    device: torch.device = CPU,
) -> list[MultiLevelHead]:
    """One head per λ trained with L_multi, all in one pass over the batches: the heads' weights stacked
    ``(L, ...)``, the forward and loss vmapped over them, one SGD step for all. Every head starts from the
    weights ``train_head`` starts from and sees its batches and dropout masks (``randomness="same"``: one mask
    drawn per step, as each separate fit draws), so each equals ``train_head(..., "multi", lam, ...)`` up to
    float rounding. Cost: one forward/backward of an ``L``-wide head per batch instead of ``L`` runs. Trained on
    ``device``, returned on the CPU."""
    if len(data) == 0:
        raise ConfigError("no training images for the classifier head; check the splits in the manifest")
    for lam in lams:
        check_lambda(lam)
    torch.manual_seed(hp.seed)
    dg, dl, k = dims
    template = MultiLevelHead(dg, dl, k, num_classes, mode=mode, hidden=hidden, dropout=hp.dropout).train()
    stacked = {
        name: p.detach().to(device).unsqueeze(0).repeat(len(lams), *([1] * p.dim())).requires_grad_()
        for name, p in template.named_parameters()
    }
    template.to(device)
    lam_t = torch.tensor(lams, dtype=torch.float32, device=device)

    def loss_of(params: dict[str, Tensor], lam: Tensor, features: dict[str, Tensor], labels: Tensor, target: Tensor):
        logits = torch.func.functional_call(template, params, (features,))
        # eq. 6, as losses.multi_task_loss (λ checked above: here it is a tensor under vmap)
        return (1.0 - lam) * classification_loss(logits, labels) + lam * distribution_loss(logits, target)

    losses = torch.func.vmap(loss_of, in_dims=(0, 0, None, None, None), randomness="same")
    optimizer = torch.optim.SGD(stacked.values(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    generator = torch.Generator().manual_seed(hp.seed)
    for _ in progress(range(hp.epochs), f"λ sweep ({len(lams)} heads)"):
        for index in batches(len(data), hp.batch_size, generator):
            b = data.select(index).on(device)
            value = losses(stacked, lam_t, b.features, b.labels, b.distributions).sum()  # heads are independent
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
    heads = []
    for i in range(len(lams)):
        head = MultiLevelHead(dg, dl, k, num_classes, mode=mode, hidden=hidden, dropout=hp.dropout)
        head.load_state_dict({name: p[i].detach().cpu().clone() for name, p in stacked.items()})
        heads.append(head.eval())
    return heads


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """One epoch's shuffled mini-batches of ``0..n-1``: ``ceil(n / batch_size)`` batches of near-equal size.

    Never a last batch of a few images: with momentum, the large gradient of a one-image batch steers the
    next several steps (seen here: 641 training images in batches of 128 trained to 35% instead of 95%).
    """
    order = torch.randperm(n, generator=generator, device="cpu")  # the seeded order, whatever the default device
    return list(torch.tensor_split(order, max(1, math.ceil(n / batch_size))))


def fit(head: MultiLevelHead, data: HeadData, hp: HeadTraining, loss_fn, device: torch.device = CPU) -> MultiLevelHead:
    """SGD over seeded shuffled mini-batches on ``device``, each read when it is due; ``loss_fn(logits (B, C),
    batch: HeadData) -> scalar``. The head comes back on the CPU."""
    head.to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    generator = torch.Generator().manual_seed(hp.seed)
    head.train()
    for _ in progress(range(hp.epochs), "head"):
        for index in batches(len(data), hp.batch_size, generator):
            b = data.select(index).on(device)
            value = loss_fn(head(b.features), b)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
    return head.cpu().eval()


def head_logits(
    head: MultiLevelHead, data: HeadData, batch_size: int = PREDICT_BATCH, device: torch.device = CPU
) -> Tensor:
    """Logits ``(N, C)`` (on the CPU) of ``data``'s images, computed on ``device`` with ``batch_size`` images'
    features read at a time."""
    head.to(device).eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            batch = data.select(torch.arange(start, min(start + batch_size, len(data)))).on(device)
            parts.append(head(batch.features).cpu())
    head.cpu()
    return torch.cat(parts) if parts else torch.zeros(0, head.fc2.out_features)


def predict(
    head: MultiLevelHead,
    data: HeadData,
    batch_size: int = PREDICT_BATCH,
    device: torch.device = CPU,
    temperature: float = 1.0,
) -> Tensor:
    """Class probabilities ``softmax(logits / temperature)`` ``(N, C)`` (on the CPU) of ``data``'s images."""
    return (head_logits(head, data, batch_size, device) / temperature).softmax(-1)


def load_head_data(prepared: Path, features: Path, emotions: EmotionsConfig) -> tuple[PreparedDataset, HeadData, tuple]:
    """The prepared dataset and its cached features, row-aligned, with the targets ``emotions`` asks for;
    ``dims`` = (Dg, Dl, K)."""
    data = PreparedDataset.load(prepared)
    store = FeatureStore(features)
    if store.paths != list(data.manifest["path"]):
        raise ConfigError(
            f"{features}: cached features are for another manifest; re-run `image-emotion extract-regions`"
        )
    p_star = emotions.dominant_probability
    targets = data.distributions(p_star, emotions.target)
    head_data = HeadData(store.all(), data.labels(), targets, data.label_probabilities(p_star))
    k, dl = store.shapes["emotional"]
    return data, head_data, (store.shapes["global"][0], dl, k)


def to_binary(data: PreparedDataset, head_data: HeadData) -> HeadData:
    """Polarity labels, distributions summed by polarity, and p* of the polarity."""
    labels = get_label_set(data.label_set)
    positive = torch.tensor([labels.polarity(x) == "positive" for x in labels.labels], dtype=torch.float32)
    pos_mass = head_data.distributions @ positive
    dist = torch.stack([1 - pos_mass, pos_mass], dim=1)
    y = torch.tensor([BINARY.index(labels.polarity(x)) for x in data.manifest["label"]])
    return head_data.with_targets(y, dist, dist.gather(1, y[:, None])[:, 0])


def split_index(data: PreparedDataset, name: str) -> np.ndarray:
    """Row indices of split ``name`` (train / val / test) in the manifest."""
    return data.split_rows(name)
