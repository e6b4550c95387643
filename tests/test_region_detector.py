"""The emotional-region detector: Faster R-CNN's four training losses, learning the synthetic motif boxes, eq. 3's
emotion score sqrt(p_emo² + p_obj²) on set probabilities, padding with the whole image, COCO initialisation of a
frozen object classifier, and one-line config errors."""

import math

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from image_emotion.config import DetectorConfig
from image_emotion.errors import ConfigError
from image_emotion.models.region_detector import RegionDetector, region_recall

SMALL = {"min_size": 128, "max_size": 128, "fpn_channels": 64, "representation_size": 128, "top_k": 4}


def _detector(**kw) -> RegionDetector:
    torch.manual_seed(0)
    return RegionDetector(DetectorConfig(**{**SMALL, **kw}))


def _loss(det, images, boxes, seed=0):
    torch.manual_seed(seed)  # the RPN/RoI samplers draw at random
    losses = det(images, [{"boxes": b} for b in boxes])
    return losses, sum(losses.values())


@pytest.mark.slow
def test_training_losses_are_the_four_of_faster_rcnn_and_finite(synthetic_small):
    images, boxes, _ = synthetic_small
    det = _detector().train()
    losses, total = _loss(det, images[:2], boxes[:2])
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert torch.isfinite(total)
    total.backward()
    assert det.object_classifier.weight.grad is None  # the object classifier stays frozen


@pytest.mark.slow
def test_a_few_steps_reduce_the_loss_and_find_the_regions(synthetic_small):
    images, boxes, _ = synthetic_small
    det = _detector().train()
    params = [p for p in det.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    _, before = _loss(det, images[:8], boxes[:8])
    for step in range(24):
        for group in opt.param_groups:
            group["lr"] = 0.01 * min(1.0, (step + 1) / 6)
        i = (step * 8) % 48
        _, loss = _loss(det, images[i : i + 8], boxes[i : i + 8], seed=step)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
    _, after = _loss(det, images[:8], boxes[:8])
    assert after.item() < 0.6 * before.item()
    det.eval()
    with torch.no_grad():
        out = det(images[48:64])
    recall = sum(region_recall(o["boxes"], b) for o, b in zip(out, boxes[48:64], strict=True)) / 16
    assert recall > 0.5  # held-out images: the top-4 regions hit most motif boxes at IoU 0.5


def test_eval_outputs_shapes_range_and_determinism(synthetic_small):
    images, _, _ = synthetic_small
    det = _detector().eval()
    with torch.no_grad():
        a = det.detect(images[:3])
        b = det.detect(images[:3])
        object_boxes, object_scores = det.detect_objects(images[:3])
    assert a.emotional_boxes.shape == (3, 4, 4) and object_boxes.shape == (3, 4, 4) and object_scores.shape == (3, 4)
    assert a.emotional_scores.shape == (3, 4)
    assert set(a.features) == {"p2", "p3", "p4", "p5"} and a.features["p2"].shape == (3, 64, 32, 32)
    # sorted best first (eq. 3 itself: test_emotion_score_is_eq3_of_the_two_probabilities)
    assert (a.emotional_scores[:, :-1] >= a.emotional_scores[:, 1:]).all()
    boxes = a.to_original(a.emotional_boxes)
    assert (boxes >= 0).all() and (boxes <= 128).all()
    torch.testing.assert_close(a.emotional_boxes, b.emotional_boxes, atol=1e-4, rtol=0)  # roi_align: not bit-exact
    torch.testing.assert_close(a.emotional_scores, b.emotional_scores, atol=1e-5, rtol=0)


def _set_probabilities(det, p_emo, p_rpn, p_obj):
    """Zero the three classifiers' weights so every proposal gets ``p_emo`` from the emotional-region classifier,
    objectness ``p_rpn`` from the RPN and ``1 - p(background) = p_obj`` from the object classifier."""
    with torch.no_grad():
        cls = det.roi_heads.box_predictor.cls_score
        cls.weight.zero_()
        cls.bias.copy_(torch.tensor([0.0, math.log(p_emo / (1 - p_emo))]))
        det.rpn.head.cls_logits.weight.zero_()
        det.rpn.head.cls_logits.bias.fill_(math.log(p_rpn / (1 - p_rpn)))
        obj = det.object_classifier
        obj.weight.zero_()
        n = obj.out_features
        obj.bias.copy_(torch.tensor([math.log(1 - p_obj)] + [math.log(p_obj / (n - 1))] * (n - 1)))


@pytest.mark.parametrize("coco", [False, True], ids=["rpn-objectness", "coco-object-classifier"])
def test_emotion_score_is_eq3_of_the_two_probabilities(synthetic_small, coco):
    images, _, _ = synthetic_small
    det = _detector().eval()
    # p_emo = 0.6 and p_obj = 0.8 give S_emo = sqrt(0.36 + 0.64) = 1 exactly; the other source of p_obj says 0.3,
    # so reading the wrong one gives sqrt(0.36 + 0.09) = 0.67, a sum 1.4, a mean 0.7, a product 0.48
    _set_probabilities(det, p_emo=0.6, p_rpn=0.3 if coco else 0.8, p_obj=0.8 if coco else 0.3)
    if coco:
        det.has_object_classifier.fill_(True)
    with torch.no_grad():
        r = det.detect(images[:2])
        _, object_scores = det.detect_objects(images[:2])
    torch.testing.assert_close(r.emotional_scores, torch.ones(2, 4), rtol=0, atol=1e-5)
    # an object region's score is its best category's probability (0.8 over 90 categories), or the objectness
    expected = 0.8 / (det.object_classifier.out_features - 1) if coco else 0.8
    torch.testing.assert_close(object_scores, torch.full((2, 4), expected), rtol=0, atol=1e-5)


def test_few_proposals_are_padded_with_the_whole_image(synthetic_small):
    images, _, _ = synthetic_small
    det = _detector(rpn_pre_nms_top_n=2, rpn_post_nms_top_n=2, top_k=6).eval()
    with torch.no_grad():
        r = det.detect(images[:1])
    assert r.emotional_boxes.shape == (1, 6, 4)
    whole = torch.tensor([0.0, 0.0, 128.0, 128.0])
    # the two proposals come first with their scores, then four whole-image boxes at score 0
    assert (r.emotional_scores[0, :2] > 0).all() and (r.emotional_scores[0, 2:] == 0).all()
    assert not torch.equal(r.emotional_boxes[0, 0], whole) and not torch.equal(r.emotional_boxes[0, 1], whole)
    torch.testing.assert_close(r.emotional_boxes[0, 2:], whole.expand(4, 4))


def test_coco_checkpoint_initialises_backbone_heads_and_frozen_object_classifier(tmp_path, capsys):
    coco = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    path = tmp_path / "fasterrcnn_resnet50_fpn_coco.pth"
    torch.save(coco.state_dict(), path)  # the layout of torchvision's published COCO file
    det = RegionDetector(
        DetectorConfig(
            backbone="resnet50",
            backbone_weights=None,
            object_weights=str(path),
            fpn_channels=256,
            representation_size=1024,
            min_size=64,
            max_size=64,
        )
    )
    ref = {k: v for k, v in coco.state_dict().items() if not k.endswith("num_batches_tracked")}  # BN counters
    # everything loads but the RPN's two output layers: COCO has 3 anchor shapes a place, the paper's RPN one
    skipped = {k for k in ref if k.startswith(("rpn.head.cls_logits.", "rpn.head.bbox_pred."))}
    assert len(skipped) == 4
    assert det.coco_loaded == (len(ref) - 4, len(ref))
    assert f"{path}: loaded {len(ref) - 4} of {len(ref)} tensors" in capsys.readouterr().err
    assert bool(det.has_object_classifier)
    assert torch.equal(det.object_classifier.weight, ref["roi_heads.box_predictor.cls_score.weight"])
    assert torch.equal(det.object_box_regressor.weight, ref["roi_heads.box_predictor.bbox_pred.weight"])
    assert torch.equal(det.backbone.body.layer3[0].conv1.weight, ref["backbone.body.layer3.0.conv1.weight"])
    assert torch.equal(det.backbone.fpn.inner_blocks[0][0].weight, ref["backbone.fpn.inner_blocks.0.0.weight"])
    assert torch.equal(det.roi_heads.box_head.fc6.weight, ref["roi_heads.box_head.fc6.weight"])
    assert torch.equal(det.object_box_head.fc7.weight, ref["roi_heads.box_head.fc7.weight"])  # the frozen copy
    assert not any(p.requires_grad for m in det.object_branch_modules() for p in m.parameters())
    det.eval()
    with torch.no_grad():
        _, object_scores = det.detect_objects([torch.rand(3, 64, 64)])
    assert object_scores.shape == (1, 10)


def test_a_v2_checkpoint_loads_into_the_v2_layout_and_is_refused_by_v1(tmp_path, capsys):
    from torchvision.models.detection import fasterrcnn_resnet50_fpn_v2

    coco = fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)
    path = tmp_path / "fasterrcnn_resnet50_fpn_v2_coco.pth"
    torch.save(coco.state_dict(), path)
    config = DetectorConfig(
        backbone="resnet50", backbone_weights=None, object_weights=str(path), fpn_channels=256, representation_size=1024
    )
    with pytest.raises(ConfigError, match=f"{path}: a v2 checkpoint .*; set detector.layout: v2"):
        RegionDetector(config)
    det = RegionDetector(config.model_copy(update={"layout": "v2", "min_size": 64, "max_size": 64}))
    ref = {k: v for k, v in coco.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert det.coco_loaded == (len(ref) - 4, len(ref))  # all but the RPN's 3-anchor output layers
    assert f"{path}: loaded {len(ref) - 4} of {len(ref)} tensors" in capsys.readouterr().err
    assert torch.equal(det.object_box_head[0][0].weight, ref["roi_heads.box_head.0.0.weight"])  # conv box head
    assert torch.equal(det.rpn.head.conv[1][0].weight, ref["rpn.head.conv.1.0.weight"])  # 2-conv RPN
    assert torch.equal(det.backbone.fpn.inner_blocks[0][1].weight, ref["backbone.fpn.inner_blocks.0.1.weight"])
    det.eval()
    with torch.no_grad():
        assert det.detect_objects([torch.rand(3, 64, 64)])[1].shape == (1, 10)


@pytest.mark.slow
def test_fine_tuning_the_emotional_branch_leaves_the_object_branch_unchanged(synthetic_small):
    images, boxes, _ = synthetic_small
    det = _detector(backbone_weights=None)
    det.freeze_object_branch()
    before = {k: v.clone() for m in det.object_branch_modules() for k, v in m.state_dict().items()}
    det.start_emotional_from_objects()
    assert torch.equal(det.roi_heads.box_head.fc6.weight, det.object_box_head.fc6.weight)
    trainable = [p for p in det.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.05, momentum=0.9)
    det.train()
    for _ in range(2):
        loss = sum(det([im.clone() for im in images[:4]], [{"boxes": b.clone()} for b in boxes[:4]]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = {k: v for m in det.object_branch_modules() for k, v in m.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(det.roi_heads.box_head.fc6.weight, det.object_box_head.fc6.weight)  # the emotional one moved


def test_object_pretraining_trains_the_object_branch_on_categories(synthetic_small):
    images, boxes, _ = synthetic_small
    det = _detector(backbone_weights=None)
    for m in det.object_branch_modules():
        m.requires_grad_(True)
    targets = [{"boxes": b.clone(), "labels": torch.full((len(b),), 2, dtype=torch.int64)} for b in boxes[:4]]
    det.train()
    losses = det.object_losses([im.clone() for im in images[:4]], targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    sum(losses.values()).backward()
    assert det.object_classifier.weight.grad is not None and det.object_classifier.weight.grad.abs().sum() > 0
    assert det.roi_heads.box_predictor.cls_score.weight.grad is None  # the emotional branch waits


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'anchors'"):
        DetectorConfig(anchors=[1])
    with pytest.raises(ConfigError, match="anchor_sizes"):
        DetectorConfig(anchor_sizes=[32, 64])
    torch.save({"x": torch.zeros(1)}, tmp_path / "not_coco.pth")
    with pytest.raises(ConfigError, match="the object branch did not load"):
        RegionDetector(DetectorConfig(**SMALL, backbone_weights=None, object_weights=str(tmp_path / "not_coco.pth")))
