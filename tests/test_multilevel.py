"""The multi-level classifier: every ablation row reads the right features, the global feature is the mean and max
of each FPN level and each region feature the RoIAlign crop of its own box (checked against torch and torchvision
computed by hand), in one backbone pass, and a head learns on them."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import roi_align

from image_emotion.config import DetectorConfig
from image_emotion.errors import ConfigError
from image_emotion.losses import classification_loss
from image_emotion.models.multilevel import (
    MODES,
    MultiLevelClassifier,
    MultiLevelHead,
    extract_features,
    feature_dims,
    global_features,
    local_features,
    parse_mode,
)
from image_emotion.models.region_detector import RegionDetector

CFG = DetectorConfig(min_size=128, max_size=128, fpn_channels=32, representation_size=64, top_k=3)


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return RegionDetector(CFG).eval()


@pytest.fixture(scope="module")
def objects():
    """An object-pretrained detector's stand-in: its own weights, its object classifier marked trained."""
    torch.manual_seed(1)
    model = RegionDetector(CFG)
    model.freeze_object_branch()
    return model.eval()


def test_parse_mode():
    assert parse_mode("global") == (True, None)
    assert parse_mode("emotional") == (False, "emotional")
    assert parse_mode("global+object") == (True, "object")
    with pytest.raises(ConfigError, match="unknown classifier mode"):
        parse_mode("local")


# CFG by hand: 32 FPN channels -> global = (mean, max) x 4 levels x 32 = 256; local = (mean, max) x 32 = 64
DG, DL = 256, 64


def test_feature_dims_by_hand(detector):
    assert feature_dims(detector) == (DG, DL)


@pytest.mark.parametrize("mode", MODES)
def test_every_ablation_row_has_the_right_input_width_and_output(detector, objects, synthetic_small, mode):
    images, _, _ = synthetic_small
    head = MultiLevelHead(DG, DL, CFG.top_k, 8, mode=mode, hidden=16)
    expected = {
        "global": DG,
        "object": 3 * DL,
        "emotional": 3 * DL,
        "global+object": DG + 3 * DL,
        "global+emotional": DG + 3 * DL,
    }[mode]
    assert head.fc1.in_features == expected
    with torch.no_grad():
        logits, feats = MultiLevelClassifier(detector, head, objects).eval()(images[:2])
    assert logits.shape == (2, 8)
    _, regions = parse_mode(mode)
    assert feats.global_.shape == (2, DG)
    for kind in ("emotional", "object"):  # inference pools only the regions its head reads
        assert getattr(feats, kind).shape == ((2, 3, DL) if kind == regions else (2, 0, DL))


@pytest.mark.parametrize(("mode", "reads"), [("global", "global"), ("object", "object"), ("emotional", "emotional")])
def test_each_mode_reads_only_its_own_features(mode, reads):
    head = MultiLevelHead(4, 2, 3, 8, mode=mode, hidden=4)
    feats = {
        "global": torch.full((1, 4), 1.0),
        "object": torch.full((1, 3, 2), 2.0),
        "emotional": torch.full((1, 3, 2), 3.0),
    }
    x = head.assemble(feats)
    assert torch.equal(x, feats[reads].flatten(1))


def test_assemble_puts_global_first_and_keeps_only_the_top_k_regions():
    head = MultiLevelHead(2, 1, 2, 8, mode="global+emotional", hidden=4)
    feats = {"global": torch.tensor([[10.0, 11.0]]), "emotional": torch.tensor([[[1.0], [2.0], [3.0]]])}
    assert head.assemble(feats).tolist() == [[10.0, 11.0, 1.0, 2.0]]


def test_one_backbone_pass_per_batch(detector, synthetic_small):
    images, _, _ = synthetic_small
    calls = []
    handle = detector.backbone.register_forward_hook(lambda *_: calls.append(1))
    model = MultiLevelClassifier(detector, MultiLevelHead(DG, DL, 3, 8)).eval()
    try:
        with torch.no_grad():
            model(images[:4])
    finally:
        handle.remove()  # the detector is shared by the module's tests
    assert len(calls) == 1


def _fpn_maps_by_hand(detector, images):
    """The FPN maps of 128-px images, normalised by hand as EfficientNet-Lite expects: (255 x - 127) / 128 (the
    detector's min/max size is 128, so its transform resizes nothing)."""
    assert detector.config.backbone == "efficientnet_lite0" and detector.config.min_size == 128
    x = torch.stack([(im * 255 - 127) / 128 for im in images])
    return detector.backbone(x)


def test_global_feature_is_mean_and_max_of_each_fpn_level(detector, synthetic_small):
    images, _, _ = synthetic_small
    with torch.no_grad():
        feats = extract_features(detector, images[:2], kinds=())
        maps = _fpn_maps_by_hand(detector, images[:2])
    parts = []
    for level in ("p2", "p3", "p4", "p5"):
        parts += [F.adaptive_avg_pool2d(maps[level], 1).flatten(1), F.adaptive_max_pool2d(maps[level], 1).flatten(1)]
    torch.testing.assert_close(feats.global_, torch.cat(parts, dim=1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(global_features(maps), torch.cat(parts, dim=1), rtol=1e-4, atol=1e-5)


def _roi_feature_by_hand(maps, image, box):
    """Mean+max of torchvision's 7x7 RoIAlign of ``box`` on the FPN level the FPN paper assigns it:
    ``floor(4 + log2(sqrt(area) / 224))`` clamped to P2-P5, at that level's stride (4, 8, 16, 32)."""
    x1, y1, x2, y2 = box.tolist()
    level = min(5, max(2, math.floor(4 + math.log2(math.sqrt((x2 - x1) * (y2 - y1)) / 224) + 1e-6)))
    crop = roi_align(
        maps[f"p{level}"][image : image + 1], [box[None]], output_size=7, spatial_scale=1 / 2**level, sampling_ratio=2
    )
    return torch.cat([crop.mean(dim=(2, 3)), crop.amax(dim=(2, 3))], dim=1)[0]


def test_region_features_follow_their_boxes(detector, objects, synthetic_small):
    images, _, _ = synthetic_small
    with torch.no_grad():
        feats = extract_features(detector, images[:2], objects=objects)
        maps = _fpn_maps_by_hand(detector, images[:2])
    for kind in ("emotional", "object"):
        boxes, pooled = getattr(feats, f"{kind}_boxes"), getattr(feats, kind)  # 128 px in and out: one scale
        for i in range(2):
            assert len({tuple(b) for b in boxes[i].tolist()}) > 1  # at least two different boxes to tell apart
            for k in range(CFG.top_k):
                expected = _roi_feature_by_hand(maps, i, boxes[i, k])
                torch.testing.assert_close(pooled[i, k], expected, rtol=1e-4, atol=1e-4)


def test_two_boxes_on_one_image_give_their_own_features(detector, synthetic_small):
    images, _, _ = synthetic_small
    # a 32-px box (read at P2) and the whole image (128 px: read at P3), the first repeated in the last slot
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 40.0], [0.0, 0.0, 128.0, 128.0], [8.0, 8.0, 40.0, 40.0]]])
    with torch.no_grad():
        regions = detector.detect(images[:1])
        pooled = local_features(detector, regions, boxes)
        swapped = local_features(detector, regions, boxes[:, [1, 0, 2]])
        maps = _fpn_maps_by_hand(detector, images[:1])
    assert pooled.shape == (1, 3, DL)
    torch.testing.assert_close(pooled[0, 0], _roi_feature_by_hand(maps, 0, boxes[0, 0]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled[0, 1], _roi_feature_by_hand(maps, 0, boxes[0, 1]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled[0, 2], pooled[0, 0])
    assert (pooled[0, 0] - pooled[0, 1]).abs().max() > 1e-2  # two boxes, two features
    torch.testing.assert_close(swapped[0, 0], pooled[0, 1])  # the feature moves with its box
    torch.testing.assert_close(swapped[0, 1], pooled[0, 0])


def test_head_learns_on_extracted_features(detector, synthetic_small):
    images, _, labels = synthetic_small
    with torch.no_grad():
        feats = extract_features(detector, images[:32], kinds=("emotional",)).as_dict()
    torch.manual_seed(0)
    head = MultiLevelHead(DG, DL, 3, 8, hidden=64, dropout=0.0)
    opt = torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = classification_loss(head(feats), labels[:32])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_an_images_features_do_not_depend_on_the_batch_it_is_in(detector, objects):
    """One image alone and in a batch with images of other sizes (which the detector would pad it to): the same
    global and region features, boxes and scores, in the batch's order."""
    generator = torch.Generator().manual_seed(3)
    wide = torch.rand(3, 96, 128, generator=generator)
    tall = torch.rand(3, 160, 120, generator=generator)
    other_wide = torch.rand(3, 96, 128, generator=generator)
    with torch.inference_mode():
        alone = extract_features(detector, [wide], objects=objects).as_dict()
        tall_alone = extract_features(detector, [tall], objects=objects).as_dict()
        mixed = extract_features(detector, [tall, wide, other_wide], objects=objects).as_dict()
    for name, value in alone.items():
        # batched convolutions differ in the last bits: 1e-4 (padding changed scores by 0.1 and more)
        torch.testing.assert_close(mixed[name][1:2], value, atol=2e-4, rtol=1e-4, msg=name)
        torch.testing.assert_close(mixed[name][0:1], tall_alone[name], atol=2e-4, rtol=1e-4, msg=name)
    assert not torch.allclose(mixed["global"][1], mixed["global"][2])  # the third image is its own


def test_object_regions_are_the_object_detectors_own_and_do_not_move_with_the_fine_tuning(
    detector, objects, synthetic_small
):
    """Table 1's object regions: the object-pretrained detector's detections, whatever the emotional fine-tuning
    did to the other detector's RPN (the fault this guards against: object regions taken from the fine-tuned
    RPN's proposals compare emotional regions with themselves)."""
    images, _, _ = synthetic_small
    tuned = copy.deepcopy(detector)
    with torch.no_grad():
        for weight in tuned.rpn.head.parameters():
            weight.add_(torch.randn_like(weight))  # the emotional fine-tuning moves the RPN
        boxes, scores = objects.detect_objects(images[:2])
        before = extract_features(detector, images[:2], objects=objects)
        after = extract_features(tuned, images[:2], objects=objects)
    torch.testing.assert_close(before.object_boxes, boxes)
    torch.testing.assert_close(before.object_scores, scores)
    torch.testing.assert_close(after.object_boxes, boxes)
    assert not torch.allclose(after.emotional_boxes, before.emotional_boxes)  # the emotional ones did move
    assert not torch.allclose(before.object_boxes, before.emotional_boxes)


def test_the_best_object_region_is_the_best_detection_of_torchvisions_faster_rcnn_inference(objects, synthetic_small):
    """Oracle: torchvision's own Faster R-CNN post-processing (softmax, per-category box regression, clipping,
    NMS) over the object branch; its highest-scoring detection is ``detect_objects``' first region."""
    images, _, _ = synthetic_small
    predictor = FastRCNNPredictor(CFG.representation_size, CFG.num_object_classes)
    predictor.cls_score, predictor.bbox_pred = objects.object_classifier, objects.object_box_regressor
    heads = RoIHeads(objects.roi_pool, objects.object_box_head, predictor, 0.5, 0.5, 512, 0.25, None, 0.0, 0.5, 100)
    with torch.no_grad():
        boxes, scores = objects.detect_objects(images[:2])
        image_list, _ = objects.transform(images[:2])  # 128-px images, 128-px input: no rescaling
        features = objects.backbone(image_list.tensors)
        proposals, _ = objects.rpn(image_list, features)
        detections, _ = heads.eval()(features, proposals, image_list.image_sizes)
    for i, found in enumerate(detections):
        best = found["scores"].argmax()
        torch.testing.assert_close(scores[i, 0], found["scores"][best])
        torch.testing.assert_close(boxes[i, 0], found["boxes"][best])
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # the K best, best first


def test_object_regions_without_the_object_detector_are_a_one_line_error(detector, synthetic_small):
    images, _, _ = synthetic_small
    with pytest.raises(ConfigError, match="object-pretrained detector") as err:
        extract_features(detector, images[:1])
    assert "\n" not in str(err.value)
