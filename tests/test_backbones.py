"""FPN backbones: the shipped EfficientNet-Lite0 ImageNet weights really classify real photos, P2-P5 have strides
4-32, freezing works from the bottom (BatchNorm frozen), and bad weight files or names are one-line config errors
naming the file."""

import re

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torchvision.ops.misc import FrozenBatchNorm2d

from image_emotion.errors import ConfigError
from image_emotion.models.backbones import (
    LITE_MEAN,
    LITE_STD,
    EfficientNetLite0,
    build_fpn_backbone,
    lite0_weights_path,
    load_state_dict_file,
)


def _imagenet_input(photo: np.ndarray) -> torch.Tensor:
    img = Image.fromarray(photo).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    return ((x - torch.tensor(LITE_MEAN)[:, None, None]) / torch.tensor(LITE_STD)[:, None, None])[None]


@pytest.mark.parametrize(
    ("photo", "classes"),
    [("chelsea", {281, 282, 283, 284, 285}), ("coffee", {967, 968}), ("rocket", {657, 744, 812})],
)
def test_lite0_imagenet_weights_really_load_and_classify_real_photos(photo, classes):
    net = EfficientNetLite0()
    assert not net.load_state_dict(load_state_dict_file(lite0_weights_path())).missing_keys
    net.eval()
    with torch.no_grad():
        probs = net(_imagenet_input(getattr(skdata, photo)())).softmax(1)[0]
    assert int(probs.argmax()) in classes  # tabby/tiger/Egyptian cat; espresso/cup; missile/projectile/space shuttle
    assert float(probs.max()) > 0.15


@pytest.mark.parametrize(("name", "size"), [("efficientnet_lite0", 128), ("resnet50", 64)])
def test_fpn_levels_shapes(name, size):
    weights = "imagenet" if name == "efficientnet_lite0" else None
    fpn = build_fpn_backbone(name, weights, out_channels=32).eval()
    with torch.no_grad():
        out = fpn(torch.randn(2, 3, size, size + 32))
    assert list(out) == ["p2", "p3", "p4", "p5"]
    for level, stride in zip(out, (4, 8, 16, 32), strict=True):
        assert out[level].shape == (2, 32, size // stride, (size + 32) // stride)


def test_trainable_layers_freeze_the_bottom():
    def trainable(k):
        return sum(
            p.numel()
            for p in build_fpn_backbone("efficientnet_lite0", None, 32, k).body.parameters()
            if p.requires_grad
        )

    counts = [trainable(k) for k in range(6)]
    assert counts[0] == 0 and counts == sorted(counts) and len(set(counts)) == 6
    everything = sum(p.numel() for p in build_fpn_backbone("efficientnet_lite0", None, 32, 5).body.parameters())
    assert counts[5] == everything  # all five layers: the whole body trains


def test_batchnorm_is_frozen():
    fpn = build_fpn_backbone("efficientnet_lite0", "imagenet", 32)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fpn.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in fpn.modules()) > 0
    # frozen statistics: training mode computes what eval mode does (batch statistics would change it)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        trained = fpn.train()(x)
        evaluated = fpn.eval()(x)
    for level in trained:
        torch.testing.assert_close(trained[level], evaluated[level], rtol=0, atol=0)


def test_bad_weights_and_names(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'missing.pth'}: weights file not found")):
        build_fpn_backbone("resnet101", tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'junk.pth'}: not a loadable PyTorch state dict")):
        build_fpn_backbone("efficientnet_lite0", tmp_path / "junk.pth")
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(
        ConfigError, match=re.escape(f"{tmp_path / 'other.pth'}: not resnet50 weights (missing conv1.weight")
    ):
        build_fpn_backbone("resnet50", tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="no ImageNet resnet101"):
        build_fpn_backbone("resnet101", "imagenet")
    with pytest.raises(ConfigError, match="unknown backbone 'vgg16'"):
        build_fpn_backbone("vgg16", None)


def test_shape_mismatch_is_a_config_error(tmp_path):
    torch.save({"_conv_stem.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "wrong.pth")
    expected = f"{tmp_path / 'wrong.pth'}: not EfficientNet-Lite0 weights (size mismatch for _conv_stem.weight"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        build_fpn_backbone("efficientnet_lite0", tmp_path / "wrong.pth")
