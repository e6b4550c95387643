"""The sentiment-vector network of seed 002 (Yang et al., AAAI-18, "Retrieving and Classifying Affective Images via
Deep Metric Learning"): texture features from Gram matrices of five convolutional layers, plus a classifier.

For each of five intermediate feature maps ``F_l`` (spread over depth: one per resolution, strides 2-32) a 1×1
convolution with 16 filters and a ReLU gives ``F'_l`` (B, 16, H_l, W_l); its Gram matrix
``Φ_l[i, j] = Σ_k F'_l[k, i] F'_l[k, j] / (H_l · W_l)`` is 16×16, and its lower triangle with the diagonal, read
row by row (``Φ11, Φ21, Φ22, Φ31, ...``, the paper's eq. 5 order; equal to the upper triangle read column by
column), gives 136 values. Each layer's 136 values are scaled to unit L2 norm and the five concatenated
(680 values, divided by √5: unit norm overall): the paper's sentiment vector ``SV``, on which the sentiment loss
and retrieval use Euclidean distances.

Choices the paper leaves open, and ours:
- which five layers (it uses GoogLeNet-Inception and names none): the last map of each resolution, ``TAPS``
  (``models.backbones``' c1-c5: Lite0 blocks 0, 2, 4, 10, 15; ResNet stem, layer1-4; GoogLeNet conv1, conv3,
  inception3b, inception4e, inception5b);
- which non-linearity after the 1×1 convolution ("adding the non-linear activation"): ReLU, as in its GoogLeNet;
- the Gram normalisation: the paper's Φ is the plain sum over the ``M_l = W_l × H_l`` positions; we divide by
  ``H_l · W_l`` so that every layer's Gram is a mean, independent of input size;
- the vector's normalisation (the paper concatenates "the sentiment vector from each layer" and compares them
  with Euclidean distances): each layer's vector at unit norm, so every layer weighs the same in a distance
  whatever its activations' scale. One L2 norm over the whole 680 values let the layer with the largest Grams
  dominate; on the embedded default the per-layer norm raised the SV row's test mAP8 from 0.219 to 0.335
  (128 px, 30 epochs, one seed).
- ``joint``: the paper does NOT join the sentiment vector with the FC feature; it retrieves with ``SV`` alone
  (Table 1, "Feature: SV"; "uses the sentiment vector rather than the fully-connected feature vector to measure
  the difference between affective images") and classifies with the softmax on the FC layer. ``joint`` is our
  extension: ``[SV, embedding / ‖embedding‖] / √2`` (two unit vectors, equal weight, unit norm overall).

Learning rates (paper: "The learning rates of the convolutional layers and the last fully-connected layer are
initialized as 10^-4 and 10^-3"): ``param_groups`` puts every convolutional layer, the new 1×1 ones included
(and the backbone's BatchNorms), at ``lr_conv`` and the fully-connected layers (the optional embedding FC and
the classifier) at ``lr_last``.

Backbones (``models.backbones.build_trunk``; ``weights``: ``"imagenet"`` for Lite0 only, a local state-dict
path, or None for random init): ``efficientnet_lite0`` (inputs normalised with ``LITE_MEAN``/``LITE_STD``),
``resnet18|50|101`` and ``googlenet`` (the paper's; ``IMAGENET_MEAN``/``IMAGENET_STD``; torchvision's
``transform_input=True``, as its ImageNet weights expect). All BatchNorms stay ordinary, trainable
``BatchNorm2d`` (the paper trains with batches of 128).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, get_args

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from image_emotion.config import MetricBackbone
from image_emotion.errors import ConfigError
from image_emotion.files import load_checkpoint, save_checkpoint
from image_emotion.models.backbones import TRUNK_TAPS, NestedTrunk, build_trunk, trunk_normalization

BACKBONES = get_args(MetricBackbone)
NUM_LAYERS = 5
SV_FILTERS = 16  # "The sentiment vector from each layer is 136 using 16 filters with kernel size of 1 × 1"

# The five tapped feature maps (``models.backbones``' taps: the last map at each resolution, strides 2-32) and
# the map pooled into the classification feature (Lite0: after its 1×1 head convolution; the others: c5).
TAPS = ("c1", "c2", "c3", "c4", "c5")
FEATURE_TAP = "head"
TAP_CHANNELS: dict[str, tuple[int, ...]] = {b: tuple(TRUNK_TAPS[b][t].channels for t in TAPS) for b in BACKBONES}
TAP_STRIDES = tuple(TRUNK_TAPS["efficientnet_lite0"][t].stride for t in TAPS)  # (2, 4, 8, 16, 32) for every one
# Channels of the last feature map, global-average-pooled into the classification feature.
FEATURE_DIMS = {b: TRUNK_TAPS[b][FEATURE_TAP].channels for b in BACKBONES}


def normalization(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on [0, 1] RGB that ``backbone`` expects its inputs normalised with."""
    _check_name(backbone)
    return trunk_normalization(backbone)


def sentiment_dim(filters: int = SV_FILTERS, layers: int = NUM_LAYERS) -> int:
    """Length of the sentiment vector: ``layers · filters (filters + 1) / 2`` (680 for 5 layers of 16)."""
    return layers * filters * (filters + 1) // 2


def gram_upper(features: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, C (C + 1) / 2)``: the Gram matrix ``Φ = F Fᵀ / (H · W)`` of the C vectorised maps,
    its independent entries in the paper's eq. 5 order ``Φ11, Φ21, Φ22, Φ31, Φ32, Φ33, ...`` (lower triangle row
    by row = upper triangle column by column, Φ being symmetric)."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    gram = torch.bmm(flat, flat.transpose(1, 2)) / (h * w)  # (B, C, C)
    rows, cols = torch.tril_indices(c, c, device=features.device)
    return gram[:, rows, cols]


def _check_name(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown metric backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")


def build_backbone(backbone: str, weights: str | Path | None) -> NestedTrunk:
    """The trunk of ``backbone`` giving ``TAPS`` and ``FEATURE_TAP`` (ordinary, trainable ``BatchNorm2d``), kept
    under ``net`` (the parameter names ``backbone.net.<layer>`` saved models have)."""
    _check_name(backbone)
    return NestedTrunk(build_trunk(backbone, weights, (*TAPS, FEATURE_TAP)))


class SentimentVectorNet(nn.Module):
    """Backbone -> (five 1×1 conv + ReLU + Gram upper triangles = sentiment vector; pooled last map [-> FC] ->
    classifier).

    ``forward(images (B, 3, H, W), normalised with ``image_mean``/``image_std``)`` returns
    ``{"sentiment": (B, 680) unit-norm SV, "sentiment_raw": (B, 680) the Gram triangles before the norms,
    "embedding": (B, E), "fc": (B, E) the embedding at unit norm (metric losses and retrieval on FC features use
    it: the margins are for unit vectors, as in FaceNet), "joint": (B, 680 + E) unit-norm,
    "logits": (B, num_classes)}`` with ``E = embedding_dim`` or the backbone's feature channels
    (``FEATURE_DIMS``) when ``embedding_dim`` is None.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | Path | None = "imagenet",
        num_classes: int = 8,
        embedding_dim: int | None = None,
        filters: int = SV_FILTERS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.backbone = build_backbone(backbone, weights)
        mean, std = normalization(backbone)
        self.image_mean, self.image_std = list(mean), list(std)
        self.filters = filters
        self.reducers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, filters, kernel_size=1), nn.ReLU(inplace=True)) for c in TAP_CHANNELS[backbone]
        )
        feature_dim = FEATURE_DIMS[backbone]
        self.embedding_dim = embedding_dim
        self.embed = (
            nn.Sequential(nn.Linear(feature_dim, embedding_dim), nn.ReLU(inplace=True))
            if embedding_dim
            else nn.Identity()
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(embedding_dim or feature_dim, num_classes)

    @property
    def sentiment_dim(self) -> int:
        return sentiment_dim(self.filters, len(self.reducers))

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Normalised ``(B, 3, H, W)`` -> the dict described in the class docstring."""
        return self.heads(*self.trunk(images))

    def trunk(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        """The backbone's part: the five tapped maps ``[(B, C_l, H_l, W_l)]`` and the pooled last map ``(B, F)``.
        With a frozen backbone these can be computed once and fed to ``heads`` every epoch."""
        features = self.backbone(images)
        maps = [features[t] for t in TAPS]
        return maps, torch.flatten(F.adaptive_avg_pool2d(features[FEATURE_TAP], 1), 1)

    def heads(self, maps: list[Tensor], pooled: Tensor) -> dict[str, Tensor]:
        """The trainable part on top of ``trunk``'s outputs: the dict described in the class docstring."""
        grams = [gram_upper(reduce(m)) for reduce, m in zip(self.reducers, maps, strict=True)]
        raw = torch.cat(grams, dim=1)
        sentiment = torch.cat([F.normalize(g, dim=1) for g in grams], dim=1) / math.sqrt(len(grams))
        embedding = self.embed(pooled)
        fc = F.normalize(embedding, dim=1)
        joint = torch.cat([sentiment, fc], dim=1) / math.sqrt(2.0)
        return {
            "sentiment": sentiment,
            "sentiment_raw": raw,
            "embedding": embedding,
            "fc": fc,
            "joint": joint,
            "logits": self.classifier(self.dropout(embedding)),
        }

    def param_groups(self, lr_conv: float, lr_last: float) -> list[dict[str, Any]]:
        """Optimizer groups for the paper's two rates: ``conv`` (backbone + 1×1 convolutions) at ``lr_conv``,
        ``last`` (embedding FC if any + classifier) at ``lr_last``; frozen parameters are left out."""
        conv = [p for m in (self.backbone, self.reducers) for p in m.parameters() if p.requires_grad]
        last = [p for m in (self.embed, self.classifier) for p in m.parameters() if p.requires_grad]
        return [{"name": "conv", "params": conv, "lr": lr_conv}, {"name": "last", "params": last, "lr": lr_last}]

    def settings(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this architecture (weights come from the state dict)."""
        return {
            "backbone": self.backbone_name,
            "num_classes": self.num_classes,
            "embedding_dim": self.embedding_dim,
            "filters": self.filters,
            "dropout": self.dropout.p,
        }


_KIND = "sentiment_vector_net"


def save_metric_model(path: Path, model: SentimentVectorNet, extra: dict[str, Any]) -> None:
    """The model's state dict, architecture settings and ``extra`` (label set, ω, margins...), atomically."""
    reserved = {"kind", "state_dict", "settings", "image_mean", "image_std"}
    clash = reserved & set(extra)
    if clash:
        raise ValueError(f"extra keys {sorted(clash)} are reserved by save_metric_model")
    save_checkpoint(
        path,
        {
            "kind": _KIND,
            "state_dict": model.state_dict(),
            "settings": model.settings(),
            "image_mean": model.image_mean,
            "image_std": model.image_std,
            **extra,
        },
        keep_previous=False,  # a model file, not a training checkpoint
    )


def load_metric_model(path: Path) -> tuple[SentimentVectorNet, dict[str, Any]]:
    """A model saved by ``save_metric_model`` (in eval mode) and its saved state."""
    state = load_checkpoint(path)
    if state is None:
        raise ConfigError(f"{path}: metric model not found; train the sentiment-vector model first")
    if state.get("kind") != _KIND:
        raise ConfigError(f"{path}: not a sentiment-vector model checkpoint (saved by save_metric_model)")
    model = SentimentVectorNet(weights=None, **state["settings"])
    model.load_state_dict(state["state_dict"])
    return model.eval(), state
