"""The emotional-region detector of seed 000 §4.1: torchvision Faster R-CNN on an FPN (P2-P5).

- RPN anchors 32², 64², 128², 256² (one size a level), aspect 1:1; anchors with IoU > 0.7 to an
  emotional-region box are positive, < 0.3 negative.
- The RoI head keeps an *object* classifier (frozen: loaded from a COCO Faster R-CNN checkpoint when given)
  and adds an *emotional-region* classifier (2-way + box regression) trained with ``L_det* = L_emo + L_reg``.
- Emotion score ``S_emo = sqrt(p_emo² + p_obj²)`` (eq. 3); the top-K regions by ``S_emo`` are the
  emotional regions. ``p_obj`` is ``1 - p(background)`` of the object classifier; without COCO weights
  it is the RPN's objectness of the proposal (the object-vs-background score S_obj that eq. 3 follows).

``detect`` returns the FPN features together with the regions, so the multi-level classifier reuses
them: one backbone pass per image. ``detect_objects`` is the object detector's own inference (run on the
object-pretrained detector, before any emotional fine-tuning): Table 1's *object regions*.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, box_iou
from torchvision.ops import boxes as box_ops

from image_emotion.config import DetectorConfig
from image_emotion.errors import ConfigError
from image_emotion.files import load_checkpoint, save_checkpoint
from image_emotion.models.backbones import LEVELS, build_fpn_backbone, load_state_dict_file


@dataclass
class Regions:
    """The detector's output for a batch, in the coordinates of the resized input (``image_sizes``).

    ``features``: FPN maps ``{"p2": (B, C, H/4, W/4), ...}``; ``emotional_boxes``: ``(B, K, 4)`` (padded with the
    whole-image box where fewer than K regions exist, score 0); ``emotional_scores``: ``(B, K)``.
    """

    features: dict[str, Tensor]
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    emotional_boxes: Tensor
    emotional_scores: Tensor

    def to_original(self, boxes: Tensor) -> Tensor:
        """Map ``(B, K, 4)`` boxes from resized-input to original image coordinates."""
        return _rescale(boxes, self.image_sizes, self.original_sizes)

    def to_resized(self, boxes: Tensor) -> Tensor:
        """Map ``(B, K, 4)`` boxes from original image to resized-input coordinates (``to_original``'s inverse)."""
        return _rescale(boxes, self.original_sizes, self.image_sizes)


def _rescale(boxes: Tensor, sizes: list[tuple[int, int]], targets: list[tuple[int, int]]) -> Tensor:
    """``(B, K, 4)`` boxes of images of ``sizes`` (h, w) mapped onto the same images at ``targets``."""
    out = boxes.clone()
    for i, ((h, w), (th, tw)) in enumerate(zip(sizes, targets, strict=True)):
        out[i, :, 0::2] *= tw / w
        out[i, :, 1::2] *= th / h
    return out


class ScoredRPN(RegionProposalNetwork):
    """torchvision's RPN, also returning each proposal's objectness probability ``(N,)`` per image."""

    def propose(
        self, images: ImageList, features: dict[str, Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
        """Proposals, their objectness probabilities, and (training) the RPN losses."""
        feats = list(features.values())
        objectness, deltas = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, scores = self.filter_proposals(proposals, objectness, images.image_sizes, per_level)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in training mode")
            labels, matched = self.assign_targets_to_anchors(anchors, targets)
            loss_obj, loss_reg = self.compute_loss(objectness, deltas, labels, self.box_coder.encode(matched, anchors))
            losses = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_reg}
        return boxes, scores, losses

    def forward(self, images, features, targets=None):  # type: ignore[override]
        boxes, _, losses = self.propose(images, features, targets)
        return boxes, losses


class RegionDetector(nn.Module):
    """Faster R-CNN (FPN) with a frozen object classifier and a trained emotional-region classifier."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or DetectorConfig()
        v2 = cfg.layout == "v2"
        self.backbone = build_fpn_backbone(
            cfg.backbone, cfg.backbone_weights, cfg.fpn_channels, cfg.trainable_layers, fpn_norm=v2
        )
        self.transform = GeneralizedRCNNTransform(
            cfg.min_size, cfg.max_size, self.backbone.image_mean, self.backbone.image_std
        )
        anchors = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), ((1.0,),) * len(cfg.anchor_sizes))
        self.rpn = ScoredRPN(
            anchors,
            RPNHead(cfg.fpn_channels, 1, conv_depth=2 if v2 else 1),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=256,
            positive_fraction=0.5,
            pre_nms_top_n={"training": cfg.rpn_train_pre_nms_top_n, "testing": cfg.rpn_pre_nms_top_n},
            post_nms_top_n={"training": cfg.rpn_train_post_nms_top_n, "testing": cfg.rpn_post_nms_top_n},
            nms_thresh=0.7,
        )
        self.roi_pool = MultiScaleRoIAlign(list(LEVELS), output_size=7, sampling_ratio=2)
        box_head = _box_head(cfg)
        self.roi_heads = RoIHeads(
            self.roi_pool,
            box_head,
            FastRCNNPredictor(cfg.representation_size, 2),  # background | emotional region
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            batch_size_per_image=cfg.box_batch_size_per_image,
            positive_fraction=0.25,
            bbox_reg_weights=None,
            score_thresh=0.0,
            nms_thresh=cfg.region_nms,
            detections_per_img=cfg.top_k,
        )
        # the object branch: its own box head (a copy, so training the emotional one cannot move it), the
        # object classifier and its box regression (used while pre-training on objects); frozen afterwards
        self.object_box_head = _box_head(cfg)
        self.object_classifier = nn.Linear(cfg.representation_size, cfg.num_object_classes)
        self.object_box_regressor = nn.Linear(cfg.representation_size, cfg.num_object_classes * 4)
        self.register_buffer("has_object_classifier", torch.tensor(False))
        self.freeze_object_branch(False)
        self.coco_loaded: tuple[int, int] | None = None  # (tensors loaded, tensors in the file)
        if cfg.object_weights:
            self.coco_loaded = self.load_coco(cfg.object_weights)

    def freeze_object_branch(self, trained: bool = True) -> None:
        """Freeze the object branch (box head copy, classifier, regressor); ``trained``: p_obj now comes from
        its classifier (after COCO weights or the object pre-training) instead of the RPN's objectness."""
        for module in (self.object_box_head, self.object_classifier, self.object_box_regressor):
            module.requires_grad_(False)
        self.has_object_classifier.fill_(bool(trained) or bool(self.has_object_classifier))

    def object_branch_modules(self) -> list[nn.Module]:
        return [self.object_box_head, self.object_classifier, self.object_box_regressor]

    def start_emotional_from_objects(self) -> None:
        """The emotional branch's box head starts from the object branch's (fine-tuning from COCO)."""
        self.roi_heads.box_head.load_state_dict(self.object_box_head.state_dict())

    def load_coco(self, path: str | Path) -> tuple[int, int]:
        """Load a torchvision COCO Faster R-CNN checkpoint (``fasterrcnn_resnet50_fpn`` key names, or ``_v2``'s
        with ``detector.layout: v2``): backbone,
        FPN and RPN where names and shapes match, the box head into both branches, the class scores and box
        regression into the (then frozen) object branch. Prints and returns (tensors loaded, tensors in file);
        refuses a file whose box head or object classifier does not load."""
        # BatchNorm's step counters are bookkeeping, not weights (the published file, with frozen BN, has none)
        state = {k: v for k, v in load_state_dict_file(path).items() if not k.endswith("num_batches_tracked")}
        renamed: dict[str, Tensor] = {}
        for k, v in state.items():
            renamed[_coco_target(k)] = v
            if k.startswith("roi_heads.box_head."):  # the box head also starts the emotional branch
                renamed[k] = v
        own = self.state_dict()
        loadable = {k: v for k, v in renamed.items() if k in own and own[k].shape == v.shape}
        needed = [
            k
            for k in own
            if k.startswith(("object_box_head.", "object_classifier.")) and not k.endswith("num_batches_tracked")
        ]
        missing = [k for k in needed if k not in loadable]
        if missing and self.config.layout == "v1" and any(k.startswith("roi_heads.box_head.0.") for k in state):
            raise ConfigError(
                f"{path}: a v2 checkpoint (fasterrcnn_resnet50_fpn_v2: conv box head); set detector.layout: v2"
            )
        if missing:
            raise ConfigError(
                f"{path}: the object branch did not load ({', '.join(missing[:3])}: missing or another shape); "
                "give a torchvision fasterrcnn_resnet50_fpn(_v2) checkpoint and set detector.layout / "
                "representation_size / num_object_classes to match it"
            )
        self.load_state_dict(loadable, strict=False)
        self.freeze_object_branch()
        used = sum(1 for k in state if k in loadable or _coco_target(k) in loadable)
        print(f"{path}: loaded {used} of {len(state)} tensors", file=sys.stderr)
        return used, len(state)

    def object_losses(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Object pre-training (COCO's role): RPN and the object branch trained on ``targets`` (``boxes (N, 4)``,
        ``labels (N,)`` object categories >= 1). Returns the four Faster R-CNN losses."""
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        proposals, _, rpn_losses = self.rpn.propose(image_list, features, targets)
        predictor = FastRCNNPredictor(self.config.representation_size, self.config.num_object_classes)
        predictor.cls_score, predictor.bbox_pred = self.object_classifier, self.object_box_regressor
        heads = RoIHeads(
            self.roi_pool,
            self.object_box_head,
            predictor,
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            batch_size_per_image=self.config.box_batch_size_per_image,
            positive_fraction=0.25,
            bbox_reg_weights=None,
            score_thresh=0.05,
            nms_thresh=0.5,
            detections_per_img=100,
        ).train()
        _, roi_losses = heads(features, proposals, image_list.image_sizes, targets)
        return {**rpn_losses, **roi_losses}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """Training: ``images`` (list of ``(3, H, W)`` in [0, 1]) and ``targets`` (``boxes (N, 4)``) -> losses.

        Evaluation: per image ``{"boxes": (K, 4), "scores": (K,)}`` - top-K emotional regions, original coords.
        """
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in training mode")
            targets = [
                {"boxes": t["boxes"], "labels": torch.ones_like(t["boxes"][:, 0], dtype=torch.int64)} for t in targets
            ]
            image_list, targets = self.transform(images, targets)
            features = self.backbone(image_list.tensors)
            proposals, _, rpn_losses = self.rpn.propose(image_list, features, targets)
            _, roi_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
            return {**rpn_losses, **roi_losses}
        regions = self.detect(images)
        boxes = regions.to_original(regions.emotional_boxes)
        return [{"boxes": b, "scores": s} for b, s in zip(boxes, regions.emotional_scores, strict=True)]

    def detect(self, images: list[Tensor]) -> Regions:
        """Top-K emotional regions with the FPN features they were found on. ``images``: list of ``(3, H, W)`` in
        [0, 1]."""
        original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        image_list, _ = self.transform(images)
        features = self.backbone(image_list.tensors)
        proposals, rpn_scores, _ = self.rpn.propose(image_list, features)
        pooled = self.roi_pool(features, proposals, image_list.image_sizes)
        logits, deltas = self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))
        p_emo = logits.softmax(-1)[:, 1]
        if bool(self.has_object_classifier):
            p_obj = 1.0 - self.object_classifier(self.object_box_head(pooled)).softmax(-1)[:, 0]
        else:
            p_obj = torch.cat(rpn_scores)
        regressed = self.roi_heads.box_coder.decode(deltas, proposals)[:, 1]
        s_emo = torch.sqrt(p_emo**2 + p_obj**2)
        boxes, scores = self._top_k_each(regressed, s_emo, proposals, image_list.image_sizes)
        return Regions(
            features=features,
            image_sizes=[(int(h), int(w)) for h, w in image_list.image_sizes],
            original_sizes=original_sizes,
            emotional_boxes=boxes,
            emotional_scores=scores,
        )

    def detect_objects(self, images: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The object detector's top-K object regions (Table 1's *object regions*), as Faster R-CNN infers objects:
        the RPN's proposals, each scored by the object classifier's best category and moved by that category's
        box regression, then NMS and the K best. Meant for the object-pretrained detector (``pretrain_objects``'s
        output), whose RPN and backbone never saw an emotional box. Without an object classifier (none trained or
        loaded) the RPN's proposals and objectness. ``images``: list of ``(3, H, W)`` in [0, 1] -> boxes
        ``(B, K, 4)`` in original image pixels, scores ``(B, K)``."""
        original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        image_list, _ = self.transform(images)
        sizes = [(int(h), int(w)) for h, w in image_list.image_sizes]
        features = self.backbone(image_list.tensors)
        proposals, rpn_scores, _ = self.rpn.propose(image_list, features)
        if bool(self.has_object_classifier):
            hidden = self.object_box_head(self.roi_pool(features, proposals, image_list.image_sizes))
            scores, category = self.object_classifier(hidden).softmax(-1)[:, 1:].max(dim=-1)
            per_category = self.roi_heads.box_coder.decode(self.object_box_regressor(hidden), proposals)
            boxes = per_category[torch.arange(len(category), device=category.device), category + 1]
        else:
            boxes, scores = torch.cat(proposals), torch.cat(rpn_scores)
        boxes, scores = self._top_k_each(boxes, scores, proposals, image_list.image_sizes)
        return _rescale(boxes, sizes, original_sizes), scores

    def _top_k_each(
        self, boxes: Tensor, scores: Tensor, proposals: list[Tensor], sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """Per image (``boxes (N, 4)``/``scores (N,)`` of every image's proposals, in order): clipped to the image,
        ``_top_k`` -> ``(B, K, 4)``, ``(B, K)``."""
        counts = [len(p) for p in proposals]
        chosen = [
            self._top_k(box_ops.clip_boxes_to_image(b, size), s, size, self.config.top_k)
            for b, s, size in zip(boxes.split(counts), scores.split(counts), sizes, strict=True)
        ]
        return torch.stack([b for b, _ in chosen]), torch.stack([s for _, s in chosen])

    def _top_k(self, boxes: Tensor, scores: Tensor, size: tuple[int, int], k: int) -> tuple[Tensor, Tensor]:
        """NMS (``region_nms``), then the ``k`` best, padded with the whole-image box at score 0: ``(k, 4), (k,)``."""
        boxes = boxes.reshape(-1, 4)
        keep = box_ops.remove_small_boxes(boxes, min_size=2.0)
        boxes, scores = boxes[keep], scores[keep]
        keep = box_ops.nms(boxes, scores, self.config.region_nms)[:k]
        boxes, scores = boxes[keep], scores[keep]
        if len(boxes) < k:
            h, w = size
            pad = torch.tensor([[0.0, 0.0, float(w), float(h)]], device=boxes.device).expand(k - len(boxes), 4)
            boxes = torch.cat([boxes, pad])
            scores = torch.cat([scores, scores.new_zeros(k - len(scores))])
        return boxes, scores


def _box_head(cfg: DetectorConfig) -> nn.Module:
    """The RoI box head of ``cfg.layout``: v1 two FC layers, v2 four 3x3 convolutions (BatchNorm) and one FC."""
    if cfg.layout == "v2":
        return FastRCNNConvFCHead(
            (cfg.fpn_channels, 7, 7), [256, 256, 256, 256], [cfg.representation_size], norm_layer=nn.BatchNorm2d
        )
    return TwoMLPHead(cfg.fpn_channels * 7 * 7, cfg.representation_size)


def _coco_target(key: str) -> str:
    """Where ``load_coco`` puts a checkpoint tensor: the box head and predictor go to the object branch."""
    for source, target in (
        ("roi_heads.box_head.", "object_box_head."),
        ("roi_heads.box_predictor.cls_score.", "object_classifier."),
        ("roi_heads.box_predictor.bbox_pred.", "object_box_regressor."),
    ):
        if key.startswith(source):
            return target + key[len(source) :]
    return key


def region_recall(pred: Tensor, gt: Tensor, iou: float = 0.5) -> float:
    """Share of ground-truth boxes ``(G, 4)`` hit by any predicted box ``(K, 4)`` at IoU >= ``iou``."""
    if len(gt) == 0:
        return 1.0
    if len(pred) == 0:
        return 0.0
    return float((box_iou(gt, pred).max(dim=1).values >= iou).float().mean())


def save_detector(detector: RegionDetector, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write the detector's config and weights atomically (``load_detector`` reads them back)."""
    state = {k: v.detach().cpu() for k, v in detector.state_dict().items()}
    state = {"config": detector.config.to_dict(), "state_dict": state, **(extra or {})}
    save_checkpoint(path, state, keep_previous=False)  # a model file, not a training checkpoint


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> RegionDetector:
    """A detector saved by ``save_detector``, in eval mode on ``device``."""
    state = load_checkpoint(path)
    if state is None:
        raise ConfigError(f"{path}: detector not found; run `image-emotion finetune-detector` first")
    config = dict(state["config"], backbone_weights=None, object_weights=None)  # the weights are in the state dict
    config["anchor_sizes"] = tuple(config["anchor_sizes"])
    detector = RegionDetector(DetectorConfig(**config))
    detector.load_state_dict(state["state_dict"])
    return detector.to(device).eval()
