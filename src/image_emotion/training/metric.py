"""Training the sentiment-vector network of seed 002 and embedding images with it.

- ``image_tensor``: the images of a prepared dataset, resized and normalised for the model ``(N, 3, S, S)``, in
  memory (small sets and tests; the stage streams them: ``metric_inputs.ImageRows``).
- ``train_metric_net``: SGD with the paper's two learning rates (``param_groups``) over class-balanced batches
  on ``(1 - ω)·CE(logits) + ω·E(feature)``, where ``E`` is the sentiment constraint (α1, α2 over D* on Mikels'
  wheel) or the plain triplet loss, on the sentiment vector (the paper) or the FC embedding at unit norm (its
  ablation);
  ω = 0 is softmax alone, ω = 1 the metric loss alone. ``freeze_backbone`` trains only the 1×1 convolutions and
  the last layers (the CPU default; the paper fine-tunes everything); the backbone's maps are then computed once
  (``TrunkCache``) and every epoch trains the 1×1 convolutions, Gram vectors and FC layers on them, which gives
  the same result as running the frozen backbone every step, at a fraction of the cost. ``centre`` (the centre
  loss of Wen et al., Table 1's "Center" row) learns one centre a class at ``lr_last``.
- ``embed``: the model's outputs for many images, in batches, in inference mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import get_args

import numpy as np
import torch
from torch import Tensor

from image_emotion.config import MetricConfig, MetricFeature, MetricLoss
from image_emotion.data.torch_data import PreparedDataset, preprocess
from image_emotion.errors import ConfigError
from image_emotion.losses import centre_loss, sentiment_constraint_loss, triplet_loss
from image_emotion.models.metric import SentimentVectorNet
from image_emotion.training import distributed
from image_emotion.training.metric_batches import class_balanced_batches
from image_emotion.training.metric_inputs import ImageRows
from image_emotion.training.progress import progress

METRIC_LOSSES = get_args(MetricLoss)
RETRIEVAL_MEASURES = ("nn", "ft", "st", "map8", "map2", "dcg", "anmrr")  # the paper's seven (``retrieval_report``)
FEATURES = get_args(MetricFeature)
_DEFAULTS = MetricConfig()  # the objective's defaults are params.yaml's `metric` section


@dataclass(frozen=True)
class MetricObjective:
    """What the metric part of the joint loss is: ``loss`` on ``feature``, weighted by ``omega``."""

    omega: float = _DEFAULTS.omega
    loss: str = _DEFAULTS.loss  # sentiment constraint | plain triplet | centre loss
    feature: str = _DEFAULTS.feature  # the sentiment vector (the paper) | the unit-norm FC embedding | both
    sampling: str = _DEFAULTS.sampling
    alpha: float = _DEFAULTS.alpha  # triplet margin
    alpha1: float = _DEFAULTS.alpha1  # sentiment constraint margins
    alpha2: float = _DEFAULTS.alpha2

    def __post_init__(self) -> None:
        if self.loss not in METRIC_LOSSES or self.feature not in FEATURES or not 0.0 <= self.omega <= 1.0:
            raise ConfigError(
                f"metric objective: loss in {METRIC_LOSSES}, feature in {FEATURES}, ω in [0, 1]; got "
                f"{self.loss!r}, {self.feature!r}, {self.omega}"
            )

    @classmethod
    def from_config(cls, config: MetricConfig) -> MetricObjective:
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})

    def outputs(self) -> tuple[str, ...]:
        """The model outputs this loss reads: the logits, and the feature unless ω = 0."""
        return ("logits",) if self.omega == 0.0 else ("logits", self.feature)

    def __call__(
        self,
        out: dict[str, Tensor],
        labels: Tensor,
        label_set: str,
        generator: torch.Generator,
        centres: Tensor | None = None,
    ) -> Tensor:
        """The joint loss of one batch: ``out`` of the model, ``labels (B,)``; ``centres (C, D)`` for ``centre``."""
        ce = torch.nn.functional.cross_entropy(out["logits"], labels)
        if self.omega == 0.0:
            return ce
        feature = out[self.feature]
        if self.loss == "sentiment":
            metric = sentiment_constraint_loss(
                feature, labels, label_set, self.alpha1, self.alpha2, self.sampling, generator
            )
        elif self.loss == "triplet":
            metric = triplet_loss(feature, labels, self.alpha, self.sampling, generator)
        else:
            if centres is None:
                raise ConfigError("the centre loss needs the class centres")
            metric = centre_loss(feature, labels, centres)
        return (1.0 - self.omega) * ce + self.omega * metric


class TrunkCache:
    """A frozen backbone's outputs for every image, computed once: ``maps`` ``[(N, C_l, H_l, W_l)]`` and
    ``pooled`` ``(N, F)``; ``batch(index)`` gives the rows of a mini-batch on ``device``."""

    def __init__(self, model: SentimentVectorNet, images: Tensor, batch_size: int = 64) -> None:
        model.backbone.eval()
        device = next(model.parameters()).device
        maps: list[list[Tensor]] = []
        pooled: list[Tensor] = []
        with torch.no_grad():  # plain tensors (not inference ones): the 1×1 convolutions save them for backward
            for start in range(0, len(images), batch_size):
                m, p = model.trunk(images[start : start + batch_size].to(device))
                maps.append([x.cpu() for x in m])
                pooled.append(p.cpu())
        self.maps = [torch.cat(level) for level in zip(*maps, strict=True)]
        self.pooled = torch.cat(pooled)
        self.device = device

    def batch(self, index: Tensor) -> tuple[list[Tensor], Tensor]:
        return [m[index].to(self.device) for m in self.maps], self.pooled[index].to(self.device)

    def subset(self, index: Tensor | np.ndarray) -> TrunkCache:
        """The cache of the images at ``index`` (e.g. the train split of a cache of every image)."""
        rows = torch.as_tensor(index, dtype=torch.long)
        out = TrunkCache.__new__(TrunkCache)
        out.maps, out.pooled, out.device = [m[rows] for m in self.maps], self.pooled[rows], self.device
        return out


def image_tensor(data: PreparedDataset, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Every image of ``data`` resized to ``size × size`` and normalised: ``(N, 3, size, size)``."""
    out = torch.empty(len(data.manifest), 3, size, size)
    for i, rel in enumerate(data.manifest["path"]):
        out[i] = preprocess(data.image(rel), size, mean, std)
    return out


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
    lr_conv: float = _DEFAULTS.lr_conv,
    lr_last: float = _DEFAULTS.lr_last,
    momentum: float = _DEFAULTS.momentum,
    freeze_backbone: bool = False,
    seed: int = 0,
    trunk: TrunkCache | None = None,
    cache_trunk: bool = True,
) -> list[float]:
    """Train ``model`` in place on ``images (N, 3, S, S)`` with ``labels (N,)``; returns the mean loss of each epoch.

    With ``freeze_backbone`` the backbone's outputs are computed once (or taken from ``trunk``, a ``TrunkCache``
    of these same images, so several models can share it; ``cache_trunk=False`` runs the frozen backbone in every
    step instead). Batches go to the model's device.

    Under torchrun (``training/distributed.py``) ``batch_size`` is the global batch: every rank draws the same
    batches (``generator``), runs the model on its slice of each, and the outputs of all slices are gathered, so
    every rank computes the loss of the whole batch (the triplets are mined across it, as in one process) and
    each row's gradient returns to the rank that computed it; DDP averages the ranks' gradients. The result is
    one process's training up to float rounding; dropout (if any) draws per rank. BatchNorm in training mode
    (``freeze_backbone=False``) uses the global batch's statistics on CUDA (SyncBatchNorm), each slice's own on
    the CPU."""
    torch.manual_seed(seed)
    rank, world = distributed.rank(), distributed.world_size()
    if rank > 0:
        torch.manual_seed(distributed.rank_seed(seed, rank))  # dropout: each rank its own masks
    generator = torch.Generator().manual_seed(seed)  # the batches and the triplets: the same on every rank
    device = next(model.parameters()).device
    for p in model.backbone.parameters():
        p.requires_grad_(not freeze_backbone)
    groups = model.param_groups(lr_conv, lr_last)
    centres = None
    if objective.loss == "centre" and objective.omega > 0.0:
        width = model(images[:2].to(device))[objective.feature].shape[1]
        centres = torch.nn.Parameter(torch.zeros(model.num_classes, width, device=device))
        groups.append({"name": "centres", "params": [centres], "lr": lr_last})
    optimizer = torch.optim.SGD(groups, momentum=momentum)
    if freeze_backbone and cache_trunk and trunk is None:
        trunk = TrunkCache(model, images)
    labels_on_device = labels.to(device)

    def outputs(index: Tensor | list[int]) -> dict[str, Tensor]:
        """The model's outputs for the images at ``index``: only those the loss reads under torchrun (DDP
        finds the parameters that get no gradient from them)."""
        index = torch.as_tensor(index, dtype=torch.long)
        out = model.heads(*trunk.batch(index)) if trunk is not None else model(images[index].to(device))
        return out if world == 1 else {k: out[k] for k in objective.outputs()}

    step = distributed.wrap(model, device, outputs, find_unused_parameters=True)
    losses = []
    for _ in progress(range(epochs), "metric network", show=rank == 0):
        model.train()
        if freeze_backbone:
            model.backbone.eval()  # its BatchNorm statistics stay the pretrained ones
        total, steps = 0.0, 0
        for index in class_balanced_batches(labels, batch_size, min_per_class, generator):
            if world == 1:
                out = step(index)
            else:  # this rank's slice (a list: DDP would move a tensor to the GPU), then every rank's rows
                local = step(distributed.split_batch(index, rank, world).tolist())
                sizes = distributed.slice_sizes(len(index), world)
                out = {k: distributed.gather_rows(v, sizes) for k, v in local.items()}
            loss = objective(out, labels_on_device[index.to(device)], label_set, generator, centres)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        losses.append(total / max(steps, 1))
    model.eval()
    return losses


def embed(
    model: SentimentVectorNet, images: Tensor, batch_size: int = 64, trunk: TrunkCache | None = None
) -> dict[str, np.ndarray]:
    """The model's outputs for ``images (N, 3, S, S)``: ``{"sentiment": (N, 680), "embedding": (N, E), ...}``
    (from ``trunk``, a ``TrunkCache`` of these images, when given)."""
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list[Tensor]] = {}
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(images)))
            out = model.heads(*trunk.batch(rows)) if trunk is not None else model(images[rows].to(device))
            for key, value in out.items():
                parts.setdefault(key, []).append(value.cpu())
    return {key: torch.cat(values).numpy() for key, values in parts.items()}


@dataclass(frozen=True)
class AblationRow:
    """One row of seed 002's Table 1: its key, its name, the objective and the feature retrieval uses."""

    key: str
    label: str
    objective: MetricObjective
    feature: str  # "fc" (the paper's FC, at unit norm) or "sentiment" (SV)


def table1_rows(config: MetricConfig) -> tuple[AblationRow, ...]:
    """Table 1's rows in the paper's order (its check marks read as: softmax; centre; triplet with random
    sampling; softmax + triplet with random / hard / semi-hard sampling; softmax + sentiment constraint on FC; on
    SV), with ω, margins and semi-hard sampling from ``config``. The centre row is trained with softmax, as Wen
    et al. define it (the centre loss alone has the trivial solution of every feature at one point)."""
    base = MetricObjective.from_config(config)
    fc, sv, semi = "fc", "sentiment", "semi-hard"

    def row(key: str, label: str, feature: str = fc, **changes) -> AblationRow:
        return AblationRow(key, label, replace(base, feature=feature, **changes), feature)

    return (
        row("softmax", "softmax", omega=0.0),
        row("centre", "softmax + centre", loss="centre"),
        row("triplet_random", "triplet (random)", omega=1.0, loss="triplet", sampling="random"),
        row("softmax_triplet_random", "softmax + triplet (random)", loss="triplet", sampling="random"),
        row("softmax_triplet_hard", "softmax + triplet (hard)", loss="triplet", sampling="hard"),
        row("softmax_triplet_semihard", "softmax + triplet (semi-hard)", loss="triplet", sampling=semi),
        row("sentiment_fc", "softmax + sentiment constraint, FC", loss="sentiment", sampling=semi),
        row("sentiment_sv", "softmax + sentiment constraint, SV", sv, loss="sentiment", sampling=semi),
    )


def score(
    out: dict[str, np.ndarray], labels: np.ndarray, queries: np.ndarray, gallery: np.ndarray, feature: str,
    label_set: str, classifier_trained: bool = True,
) -> dict[str, float]:  # fmt: skip
    """Accuracy and the seven retrieval measures of ``queries`` (row indices) against ``gallery`` with ``feature``
    of the model outputs ``out`` (the paper's FI protocol: test queries, train gallery). Accuracy is the
    classifier's; without a trained classifier (ω = 1) it is the label of the nearest gallery image."""
    from image_emotion.metrics import rank_gallery, retrieval_report

    q, g = out[feature][queries], out[feature][gallery]
    report = retrieval_report(q, labels[queries], g, labels[gallery], label_set)
    predicted = out["logits"][queries].argmax(1) if classifier_trained else labels[gallery][rank_gallery(q, g)[:, 0]]
    return {"accuracy": float((predicted == labels[queries]).mean()), **report}


def embed_prepared(model: SentimentVectorNet, state: dict, data: PreparedDataset) -> dict[str, np.ndarray]:
    """A saved model's outputs for every image of ``data``, preprocessed as the model was trained (``state``:
    ``load_metric_model``'s saved state with ``image_size``, ``image_mean``, ``image_std``)."""
    return embed(model, ImageRows(data, state["image_size"], state["image_mean"], state["image_std"]))
