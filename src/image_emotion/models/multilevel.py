"""The multi-level classifier of seed 000 §4.3: ``X = [X_global, X_local × K] -> FC -> FC -> softmax``.

Global and local features come from the *same* FPN maps the detector used (one backbone pass): the global
feature is the mean- and max-pooled P2-P5 maps, each local feature the mean- and max-pooled 7×7 RoIAlign
crop of a region at the FPN level its size maps to (small regions read fine levels, large ones coarse:
the "multi-level" of the paper).

Ablations (Table 1 rows), by ``mode``: ``global`` | ``object`` | ``emotional`` | ``global+object`` |
``global+emotional``. Features are extracted once (``RegionFeatures``) and every mode reads them. Object regions
are found by the object-pretrained detector (``RegionDetector.detect_objects``, the paper's COCO detector) and,
like the emotional ones, read from the fine-tuned detector's FPN maps, so the two kinds differ only in where
the regions are: the comparison Table 1 makes.

Names: the *head* (``MultiLevelHead``) is the classifier's trainable part, reading features; the stage
``train_classifier`` trains heads (``save_head``/``load_head`` store them); ``MultiLevelClassifier`` is
detector + head, images in, logits out (inference and serving).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch
from torch import Tensor, nn

from image_emotion.config import HeadMode
from image_emotion.errors import ConfigError
from image_emotion.files import load_checkpoint, save_checkpoint
from image_emotion.models.backbones import LEVELS
from image_emotion.models.region_detector import RegionDetector, Regions

MODES = get_args(HeadMode)


def parse_mode(mode: str) -> tuple[bool, str | None]:
    """``mode`` -> (use the global feature, which regions: ``"object"``, ``"emotional"`` or None)."""
    if mode not in MODES:
        raise ConfigError(f"unknown classifier mode {mode!r}; expected one of {', '.join(MODES)}")
    parts = mode.split("+")
    regions = next((p for p in parts if p != "global"), None)
    return "global" in parts, regions


@dataclass
class RegionFeatures:
    """Everything a classifier head needs, for a batch of B images and K regions.

    ``global_``: ``(B, Dg)``; ``emotional``/``object``: ``(B, K, Dl)``; ``*_boxes``: ``(B, K, 4)`` in
    original image pixels; ``*_scores``: ``(B, K)``.
    """

    global_: Tensor
    emotional: Tensor
    object: Tensor
    emotional_boxes: Tensor
    emotional_scores: Tensor
    object_boxes: Tensor
    object_scores: Tensor

    def as_dict(self) -> dict[str, Tensor]:
        return {
            "global": self.global_,
            "emotional": self.emotional,
            "object": self.object,
            "emotional_boxes": self.emotional_boxes,
            "emotional_scores": self.emotional_scores,
            "object_boxes": self.object_boxes,
            "object_scores": self.object_scores,
        }


def global_features(features: dict[str, Tensor]) -> Tensor:
    """Mean and max of every FPN level, concatenated: ``{"p2": (B, C, h, w), ...}`` -> ``(B, 2 · 4 · C)``."""
    maps = [features[k] for k in LEVELS]
    return torch.cat([torch.cat([m.mean(dim=(2, 3)), m.amax(dim=(2, 3))], dim=1) for m in maps], dim=1)


def local_features(detector: RegionDetector, regions: Regions, boxes: Tensor) -> Tensor:
    """Mean+max of the 7×7 RoIAlign crop of each box (resized-input coords ``(B, K, 4)``) -> ``(B, K, 2C)``."""
    b, k, _ = boxes.shape
    crops = detector.roi_pool(regions.features, list(boxes), regions.image_sizes)  # (B*K, C, 7, 7)
    pooled = torch.cat([crops.mean(dim=(2, 3)), crops.amax(dim=(2, 3))], dim=1)
    return pooled.view(b, k, -1)


def extract_features(
    detector: RegionDetector,
    images: list[Tensor],
    kinds: tuple[str, ...] = ("emotional", "object"),
    objects: RegionDetector | None = None,
) -> RegionFeatures:
    """One backbone pass per image size: global features and, for each of ``kinds``, the top-K regions' features.

    ``images``: list of ``(3, H, W)`` in [0, 1]. Images of one size go through the detector together; images of
    another size never share its padding (the detector pads a batch to its largest image, and the padding would
    enter the global pooling and the RPN), so an image's features do not depend on the batch it is in. Region
    kinds not asked for get empty ``(B, 0, Dl)`` features (inference reads only the kind its head uses). The
    ``"object"`` kind needs ``objects``, the object-pretrained detector (a second backbone pass, its own).
    """
    if "object" in kinds and objects is None:
        raise ConfigError(
            "object regions come from the object-pretrained detector; give it (models/objects/detector.pt, "
            "made by `image-emotion pretrain-objects`)"
        )
    groups = size_groups(images)
    if len(groups) == 1:
        return _extract_same_size(detector, images, kinds, objects)
    parts = [_extract_same_size(detector, [images[i] for i in group], kinds, objects) for group in groups]
    order = torch.tensor([i for group in groups for i in group])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    joined = {
        name: torch.cat([getattr(part, name) for part in parts])[inverse.to(parts[0].global_.device)]
        for name in RegionFeatures.__dataclass_fields__
    }
    return RegionFeatures(**joined)


def size_groups(images: list[Tensor]) -> list[list[int]]:
    """Positions of ``images`` grouped by ``(H, W)``, groups in order of their first image."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(i)
    return list(groups.values())


def _extract_same_size(
    detector: RegionDetector, images: list[Tensor], kinds: tuple[str, ...], objects: RegionDetector | None
) -> RegionFeatures:
    regions = detector.detect(images)
    b = len(images)
    empty = regions.features["p2"].new_zeros(b, 0, feature_dims(detector)[1])
    emotional = local_features(detector, regions, regions.emotional_boxes) if "emotional" in kinds else empty
    object_boxes, object_scores = empty.new_zeros(b, 0, 4), empty.new_zeros(b, 0)
    object_features = empty
    if "object" in kinds and objects is not None:
        object_boxes, object_scores = objects.detect_objects(images)
        object_features = local_features(detector, regions, regions.to_resized(object_boxes))
    return RegionFeatures(
        global_=global_features(regions.features),
        emotional=emotional,
        object=object_features,
        emotional_boxes=regions.to_original(regions.emotional_boxes),
        emotional_scores=regions.emotional_scores,
        object_boxes=object_boxes,
        object_scores=object_scores,
    )


def feature_dims(detector: RegionDetector) -> tuple[int, int]:
    """(global dim ``Dg``, local dim ``Dl``) of ``extract_features`` for this detector."""
    c = detector.config.fpn_channels
    return 2 * len(LEVELS) * c, 2 * c


class MultiLevelHead(nn.Module):
    """``X = [X_global, X_local × K]`` -> LayerNorm -> FC(hidden) -> ReLU -> Dropout -> FC(classes): logits."""

    def __init__(
        self,
        global_dim: int,
        local_dim: int,
        top_k: int,
        num_classes: int,
        mode: str = "global+emotional",
        hidden: int = 512,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.use_global, self.regions = parse_mode(mode)
        self.top_k = top_k
        in_dim = (global_dim if self.use_global else 0) + (local_dim * top_k if self.regions else 0)
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def assemble(self, features: dict[str, Tensor]) -> Tensor:
        """``X`` for this mode: ``(B, Dg + K · Dl)`` (or either part alone)."""
        parts = []
        if self.use_global:
            parts.append(features["global"])
        if self.regions:
            local = features[self.regions][:, : self.top_k]
            parts.append(local.flatten(1))
        return torch.cat(parts, dim=1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """Features (``RegionFeatures.as_dict()`` or cached tensors) -> logits ``(B, num_classes)``."""
        x = self.norm(self.assemble(features))
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class MultiLevelClassifier(nn.Module):
    """Detector + head for end-to-end inference: images -> logits, with the regions that explain them."""

    def __init__(self, detector: RegionDetector, head: MultiLevelHead, objects: RegionDetector | None = None) -> None:
        """``objects``: the object-pretrained detector, needed by heads of the object ablations only."""
        super().__init__()
        self.detector = detector
        self.head = head
        self.objects = objects

    def forward(self, images: list[Tensor]) -> tuple[Tensor, RegionFeatures]:
        """``images``: list of ``(3, H, W)`` in [0, 1] -> logits ``(B, classes)`` and the region features."""
        kinds = (self.head.regions,) if self.head.regions else ()
        feats = extract_features(self.detector, images, kinds=kinds, objects=self.objects)
        return self.head(feats.as_dict()), feats


def save_head(
    path: Path, head: MultiLevelHead, dims: tuple[int, int, int], label_set: str, extra: dict[str, Any]
) -> None:
    """The head, its shape (``dims`` = (Dg, Dl, K)), mode, label set and ``extra`` (e.g. λ), atomically."""
    save_checkpoint(
        path,
        {
            "state_dict": head.state_dict(),
            "dims": list(dims),
            "mode": head.mode,
            "num_classes": head.fc2.out_features,
            "hidden": head.fc1.out_features,
            "label_set": label_set,
            **extra,
        },
        keep_previous=False,  # a model file, not a training checkpoint
    )


def load_head(path: Path) -> tuple[MultiLevelHead, dict[str, Any]]:
    """A head saved by ``save_head`` (in eval mode) and its saved state."""

    state = load_checkpoint(path)
    if state is None:
        raise ConfigError(f"{path}: classifier head not found; run `image-emotion train-classifier` first")
    dg, dl, k = state["dims"]
    head = MultiLevelHead(dg, dl, k, state["num_classes"], mode=state["mode"], hidden=state["hidden"])
    head.load_state_dict(state["state_dict"])
    return head.eval(), state
