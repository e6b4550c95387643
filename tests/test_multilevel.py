import pytest
import torch

from image_emotion.errors import ConfigError
from image_emotion.losses import classification_loss
from image_emotion.models.multilevel import (
    MODES,
    MultiLevelClassifier,
    MultiLevelHead,
    extract_features,
    feature_dims,
    global_features,
    parse_mode,
)
from image_emotion.models.region_detector import DetectorConfig, RegionDetector

CFG = DetectorConfig(min_size=128, max_size=128, fpn_channels=32, representation_size=64, top_k=3)


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return RegionDetector(CFG).eval()


def test_parse_mode():
    assert parse_mode("global") == (True, None)
    assert parse_mode("emotional") == (False, "emotional")
    assert parse_mode("global+object") == (True, "object")
    with pytest.raises(ConfigError, match="unknown classifier mode"):
        parse_mode("local")


@pytest.mark.parametrize("mode", MODES)
def test_every_ablation_row_has_the_right_input_width_and_output(detector, embedded_small, mode):
    images, _, _ = embedded_small
    dg, dl = feature_dims(detector)
    head = MultiLevelHead(dg, dl, CFG.top_k, 8, mode=mode, hidden=16)
    expected = {
        "global": dg,
        "object": 3 * dl,
        "emotional": 3 * dl,
        "global+object": dg + 3 * dl,
        "global+emotional": dg + 3 * dl,
    }[mode]
    assert head.fc1.in_features == expected
    with torch.no_grad():
        logits, feats = MultiLevelClassifier(detector, head).eval()(images[:2])
    assert logits.shape == (2, 8)
    _, regions = parse_mode(mode)
    assert feats.global_.shape == (2, dg)
    for kind in ("emotional", "object"):  # inference pools only the regions its head reads
        assert getattr(feats, kind).shape == ((2, 3, dl) if kind == regions else (2, 0, dl))


def test_one_backbone_pass_per_batch(detector, embedded_small):
    images, _, _ = embedded_small
    calls = []
    handle = detector.backbone.register_forward_hook(lambda *_: calls.append(1))
    dg, dl = feature_dims(detector)
    model = MultiLevelClassifier(detector, MultiLevelHead(dg, dl, 3, 8)).eval()
    with torch.no_grad():
        model(images[:4])
    handle.remove()
    assert len(calls) == 1


def test_global_feature_is_pooled_from_the_same_fpn_maps(detector, embedded_small):
    images, _, _ = embedded_small
    with torch.no_grad():
        feats = extract_features(detector, images[:2])
        image_list, _ = detector.transform(images[:2])
        direct = global_features(detector.backbone(image_list.tensors))
    torch.testing.assert_close(feats.global_, direct)


def test_region_features_follow_their_boxes(detector, embedded_small):
    images, _, _ = embedded_small
    with torch.no_grad():
        feats = extract_features(detector, images[:2])
    # different boxes give different features; the whole-image padding, if any, is identical across slots
    assert not torch.allclose(feats.emotional[0, 0], feats.emotional[1, 0])


def test_head_learns_on_extracted_features(detector, embedded_small):
    images, _, labels = embedded_small
    with torch.no_grad():
        feats = extract_features(detector, images[:32]).as_dict()
    dg, dl = feature_dims(detector)
    torch.manual_seed(0)
    head = MultiLevelHead(dg, dl, 3, 8, hidden=64, dropout=0.0)
    opt = torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = classification_loss(head(feats), labels[:32])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
