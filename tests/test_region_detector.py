import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from image_emotion.errors import ConfigError
from image_emotion.models.region_detector import DetectorConfig, RegionDetector, region_recall

SMALL = {"min_size": 128, "max_size": 128, "fpn_channels": 64, "representation_size": 128, "top_k": 4}


def _detector(**kw) -> RegionDetector:
    torch.manual_seed(0)
    return RegionDetector(DetectorConfig(**{**SMALL, **kw}))


def _loss(det, images, boxes, seed=0):
    torch.manual_seed(seed)  # the RPN/RoI samplers draw at random
    losses = det(images, [{"boxes": b} for b in boxes])
    return losses, sum(losses.values())


def test_training_losses_are_the_four_of_faster_rcnn_and_finite(embedded_small):
    images, boxes, _ = embedded_small
    det = _detector().train()
    losses, total = _loss(det, images[:2], boxes[:2])
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert torch.isfinite(total)
    total.backward()
    assert det.object_classifier.weight.grad is None  # the object classifier stays frozen


def test_a_few_steps_reduce_the_loss_and_find_the_regions(embedded_small):
    images, boxes, _ = embedded_small
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


def test_eval_outputs_shapes_range_and_determinism(embedded_small):
    images, _, _ = embedded_small
    det = _detector().eval()
    with torch.no_grad():
        a = det.detect(images[:3])
        b = det.detect(images[:3])
    assert a.emotional_boxes.shape == (3, 4, 4) and a.object_boxes.shape == (3, 4, 4)
    assert a.emotional_scores.shape == (3, 4)
    assert set(a.features) == {"p2", "p3", "p4", "p5"} and a.features["p2"].shape == (3, 64, 32, 32)
    # S_emo = sqrt(p_emo² + p_obj²) lies in [0, sqrt 2], sorted best first
    assert (a.emotional_scores >= 0).all() and (a.emotional_scores <= 2**0.5 + 1e-6).all()
    assert (a.emotional_scores[:, :-1] >= a.emotional_scores[:, 1:]).all()
    boxes = a.to_original(a.emotional_boxes)
    assert (boxes >= 0).all() and (boxes <= 128).all()
    torch.testing.assert_close(a.emotional_boxes, b.emotional_boxes, atol=1e-4, rtol=0)  # roi_align: not bit-exact
    torch.testing.assert_close(a.emotional_scores, b.emotional_scores, atol=1e-5, rtol=0)


def test_few_proposals_are_padded_with_the_whole_image(embedded_small):
    images, _, _ = embedded_small
    det = _detector(rpn_pre_nms_top_n=2, rpn_post_nms_top_n=2, top_k=6).eval()
    with torch.no_grad():
        r = det.detect(images[:1])
    assert r.emotional_boxes.shape == (1, 6, 4)
    assert (r.emotional_scores[0, 2:] == 0).all()
    torch.testing.assert_close(r.emotional_boxes[0, -1], torch.tensor([0.0, 0.0, 128.0, 128.0]))


def test_coco_checkpoint_initialises_backbone_heads_and_frozen_object_classifier(tmp_path):
    coco = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    torch.save(coco.state_dict(), tmp_path / "fasterrcnn_resnet50_fpn_coco.pth")  # same keys as the real file
    det = RegionDetector(
        DetectorConfig(
            backbone="resnet50",
            backbone_weights=None,
            object_weights=str(tmp_path / "fasterrcnn_resnet50_fpn_coco.pth"),
            fpn_channels=256,
            representation_size=1024,
            min_size=64,
            max_size=64,
        )
    )
    ref = coco.state_dict()
    assert bool(det.has_object_classifier)
    assert torch.equal(det.object_classifier.weight, ref["roi_heads.box_predictor.cls_score.weight"])
    assert torch.equal(det.backbone.body.layer3[0].conv1.weight, ref["backbone.body.layer3.0.conv1.weight"])
    assert torch.equal(det.backbone.fpn.inner_blocks[0][0].weight, ref["backbone.fpn.inner_blocks.0.0.weight"])
    assert torch.equal(det.roi_heads.box_head.fc6.weight, ref["roi_heads.box_head.fc6.weight"])
    det.eval()
    with torch.no_grad():
        r = det.detect([torch.rand(3, 64, 64)])
    assert r.object_scores.shape == (1, 10)


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        DetectorConfig.from_params({"anchors": [1]})
    with pytest.raises(ConfigError, match="one size per level"):
        DetectorConfig.from_params({"anchor_sizes": [32, 64]})
    torch.save({"x": torch.zeros(1)}, tmp_path / "not_coco.pth")
    with pytest.raises(ConfigError, match="no object classifier"):
        RegionDetector(DetectorConfig(**SMALL, backbone_weights=None, object_weights=str(tmp_path / "not_coco.pth")))
