"""The one trunk factory (``build_trunk``): its named taps have the documented channels and strides (measured on an
input of known size against shapes worked out by hand), a trunk cut at an early tap computes the same maps and
draws the same random numbers as the whole one, its head tap feeds the network's own classifier, the module layouts
saved checkpoints rely on are kept, and the one weight loader refuses a wrong file with a one-line error naming it."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torchvision.models import GoogLeNet, resnet18

from image_emotion.errors import ConfigError
from image_emotion.models.backbones import (
    TRUNK_TAPS,
    EfficientNetLite0,
    build_fpn_backbone,
    build_trunk,
    lite0_weights_path,
    load_state_dict_file,
    load_weights,
)
from image_emotion.models.generative import build_encoder
from image_emotion.models.metric import SentimentVectorNet

H, W = 96, 128  # both divisible by 32
# (channels, height, width) of each tap on a (B, 3, 96, 128) input, by hand: stride 2 -> 48×64, 4 -> 24×32,
# 8 -> 12×16, 16 -> 6×8, 32 -> 3×4; channels from the papers' tables (Lite0: EfficientNet-B0's stages and its
# 1280-channel head; ResNet: 64 stem, then 64/128/256/512 basic or ×4 bottleneck; GoogLeNet: Szegedy et al.'s
# table 1: conv1 64, conv3 192, inception 3b 480, 4e 832, 5b 1024).
EXPECTED = {
    "efficientnet_lite0": {
        "c1": (16, 48, 64), "c2": (24, 24, 32), "c3": (40, 12, 16), "c4": (112, 6, 8), "c5": (320, 3, 4),
        "head": (1280, 3, 4),
    },
    "resnet18": {
        "c1": (64, 48, 64), "c2": (64, 24, 32), "c3": (128, 12, 16), "c4": (256, 6, 8), "c5": (512, 3, 4),
        "head": (512, 3, 4),
    },
    "resnet50": {
        "c1": (64, 48, 64), "c2": (256, 24, 32), "c3": (512, 12, 16), "c4": (1024, 6, 8), "c5": (2048, 3, 4),
        "head": (2048, 3, 4),
    },
    "googlenet": {
        "c1": (64, 48, 64), "c2": (192, 24, 32), "c3": (480, 12, 16), "c4": (832, 6, 8), "c5": (1024, 3, 4),
        "head": (1024, 3, 4),
    },
}  # fmt: skip


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_taps_names_channels_and_strides_match_the_hand_worked_shapes(name):
    torch.manual_seed(0)
    trunk = build_trunk(name, None).eval()
    with torch.no_grad():
        out = trunk(_x())
    assert list(out) == ["c1", "c2", "c3", "c4", "c5", "head"]  # depth order
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == EXPECTED[name]
    assert all(v.shape[0] == 2 for v in out.values())
    # the declared channels and strides are what the maps measure
    assert trunk.channels == {k: c for k, (c, _, _) in EXPECTED[name].items()}
    assert trunk.strides == {k: H // h for k, (_, h, _) in EXPECTED[name].items()}
    assert trunk.strides == {k: W // w for k, (_, _, w) in EXPECTED[name].items()}
    assert {k: (t.channels, t.stride) for k, t in TRUNK_TAPS[name].items()} == {
        k: (c, H // h) for k, (c, h, _) in EXPECTED[name].items()
    }


# The layers the module docstring documents for c1-c5: each tap is that layer's output in the network's own forward.
DOCUMENTED = {
    "efficientnet_lite0": ("_blocks.0", "_blocks.2", "_blocks.4", "_blocks.10", "_blocks.15"),
    "resnet18": ("relu", "layer1", "layer2", "layer3", "layer4"),
    "googlenet": ("conv1", "conv3", "inception3b", "inception4e", "inception5b"),
}
NETWORKS = {
    "efficientnet_lite0": EfficientNetLite0,
    "resnet18": lambda: resnet18(weights=None),
    "googlenet": lambda: GoogLeNet(aux_logits=False, transform_input=True, init_weights=True),
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_taps_are_the_documented_layers_outputs_in_the_networks_own_forward(name):
    torch.manual_seed(0)
    net = NETWORKS[name]().eval()  # the same random draws as the trunk's: equal weights
    torch.manual_seed(0)
    trunk = build_trunk(name, None, ("c1", "c2", "c3", "c4", "c5")).eval()
    seen: dict[str, torch.Tensor] = {}
    for layer in DOCUMENTED[name]:
        net.get_submodule(layer).register_forward_hook(
            lambda _m, _a, out, layer=layer: seen.setdefault(layer, out.detach().clone())
        )
    with torch.no_grad():
        net(_x(3))
        taps = trunk(_x(3))
    for tap, layer in zip(taps, DOCUMENTED[name], strict=True):
        assert torch.equal(taps[tap], seen[layer]), (tap, layer)


def test_a_trunk_cut_early_gives_the_same_maps_and_draws_the_same_random_numbers():
    torch.manual_seed(0)
    whole = build_trunk("efficientnet_lite0", None).eval()
    rng_whole = torch.random.get_rng_state()
    torch.manual_seed(0)
    cut = build_trunk("efficientnet_lite0", None, ("c3", "c2")).eval()  # asked out of order
    assert torch.equal(torch.random.get_rng_state(), rng_whole)  # what is built next initialises the same
    assert cut.taps == ("c2", "c3") and cut.channels == {"c2": 24, "c3": 40}
    keys = set(cut.state_dict())
    assert "_blocks.4._project_conv.weight" in keys  # the last block at stride 8 (c3)
    assert not any(k.startswith(("_blocks.5.", "_conv_head", "_bn1", "_fc")) for k in keys)  # nothing past it
    with torch.no_grad():
        expected, got = whole(_x(1)), cut(_x(1))
    assert list(got) == ["c2", "c3"]
    for tap in got:
        assert torch.equal(got[tap], expected[tap])


def test_the_head_tap_feeds_the_networks_own_classifier():
    net = EfficientNetLite0()
    net.load_state_dict(load_state_dict_file(lite0_weights_path()))
    trunk = build_trunk("efficientnet_lite0", "imagenet", ("head",))
    net.eval(), trunk.eval()
    x = _x(2)
    with torch.no_grad():
        pooled = trunk(x)["head"].mean(dim=(2, 3))
        torch.testing.assert_close(net._fc(pooled), net(x), rtol=0, atol=0)


def test_bad_names_taps_and_imagenet_requests_are_config_errors():
    with pytest.raises(ConfigError, match="unknown trunk 'vgg16'; expected one of efficientnet_lite0, resnet18"):
        build_trunk("vgg16")
    with pytest.raises(ConfigError, match=re.escape("trunk resnet18: taps must be some of c1, c2, c3, c4, c5, head")):
        build_trunk("resnet18", None, ("c6",))
    with pytest.raises(ConfigError, match="no ImageNet googlenet weights ship offline"):
        build_trunk("googlenet", "imagenet")


def test_saved_checkpoint_layouts_are_kept():
    """Detector, sentiment-vector and generative checkpoints name the trunk's parameters these ways."""
    torch.manual_seed(0)
    fpn_lite = build_fpn_backbone("efficientnet_lite0", None, 16).state_dict()
    assert "body.net._blocks.15._project_conv.weight" in fpn_lite and "body.net._conv_head.weight" not in fpn_lite
    fpn_resnet = build_fpn_backbone("resnet50", None, 16).state_dict()  # torchvision's detection names
    assert list(fpn_resnet)[:2] == ["body.conv1.weight", "body.bn1.weight"]
    assert "body.layer4.2.conv3.weight" in fpn_resnet and not any(k.startswith("body.fc") for k in fpn_resnet)
    metric = SentimentVectorNet("resnet18", weights=None).state_dict()
    assert "backbone.net.conv1.weight" in metric and "backbone.net.layer4.1.bn2.running_var" in metric
    assert not any(k.startswith(("backbone.net.fc", "backbone.net.avgpool")) for k in metric)
    encoder = build_encoder("efficientnet_lite0", None, 64).state_dict()
    assert next(iter(encoder)) == "net._conv_stem.weight" and "net._bn1.running_var" in encoder
    assert not any(k.startswith("net._fc") for k in encoder)


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1))


def test_the_loader_loads_what_the_module_has_and_ignores_the_rest(tmp_path):
    torch.manual_seed(0)
    source = _tiny()
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": {**source.state_dict(), "fc.weight": torch.zeros(7, 7)}}, path)  # extra key: ignored
    target = _tiny()
    load_weights(target, path, "tiny")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_the_loader_refuses_a_wrong_file_with_one_line_naming_it(tmp_path):
    torch.manual_seed(0)
    partial = tmp_path / "partial.pth"
    torch.save({"0.weight": torch.zeros(4, 3, 1, 1), "0.bias": torch.zeros(4)}, partial)
    with pytest.raises(ConfigError) as missing:
        load_weights(_tiny(), partial, "tiny")
    # the module has 0.weight, 0.bias, 1.weight, 1.bias: the file lacks the last two
    assert str(missing.value) == f"{partial}: not tiny weights (missing 1.weight and 1 more)"

    wrong_shape = tmp_path / "wrong_shape.pth"
    torch.save({k: torch.zeros(9) if k == "1.bias" else v for k, v in _tiny().state_dict().items()}, wrong_shape)
    with pytest.raises(ConfigError) as mismatch:
        load_weights(_tiny(), wrong_shape, "tiny")
    message = str(mismatch.value)
    assert "\n" not in message
    assert message.startswith(f"{wrong_shape}: not tiny weights (size mismatch for 1.bias")

    lite0 = lite0_weights_path()  # a real file, the wrong network
    with pytest.raises(ConfigError) as other:
        build_trunk("resnet18", lite0)
    assert "\n" not in str(other.value)
    assert str(other.value).startswith(f"{lite0}: not resnet18 weights (missing conv1.weight and ")
