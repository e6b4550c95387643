"""Seed 002's sentiment-vector network: the Gram upper triangle in the paper's order, 5 × 136 = 680 values from
five taps at strides 2-32, gradients into the 1×1 convolutions and the backbone, real Lite0 / local-file weights,
the two learning-rate groups, and a save/load round trip that reproduces the outputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.models import GoogLeNet, resnet18

from image_emotion.errors import ConfigError
from image_emotion.files import save_checkpoint
from image_emotion.models.backbones import IMAGENET_MEAN, LITE_MEAN, lite0_weights_path, load_state_dict_file
from image_emotion.models.metric import (
    TAP_CHANNELS,
    SentimentVectorNet,
    gram_upper,
    load_metric_model,
    save_metric_model,
)

SIZE = 64


def _images(n: int = 2, seed: int = 0) -> Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_gram_upper_order_is_the_papers_lower_triangle_row_by_row():
    # one position (H = W = 1): Φ = f fᵀ with f = (1, 2, 3) -> [[1, 2, 3], [2, 4, 6], [3, 6, 9]]
    features = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    # eq. 5 order Φ11, Φ21, Φ22, Φ31, Φ32, Φ33 (row-major upper triangle would be 1, 2, 3, 4, 6, 9)
    assert gram_upper(features).tolist() == [[1.0, 2.0, 4.0, 3.0, 6.0, 9.0]]


def test_gram_upper_divides_by_h_times_w_per_sample():
    # sample 0: channel 0 = [[1, 2], [3, 4]], channel 1 = [[0, 1], [1, 0]]
    #   Φ11 = (1 + 4 + 9 + 16) / 4 = 7.5, Φ21 = (0 + 2 + 3 + 0) / 4 = 1.25, Φ22 = (0 + 1 + 1 + 0) / 4 = 0.5
    # sample 1: channel 0 = [[0, 1], [1, 0]], channel 1 = [[2, 0], [0, 2]]
    #   Φ11 = 2 / 4 = 0.5, Φ21 = 0 / 4 = 0, Φ22 = 8 / 4 = 2
    features = torch.tensor(
        [
            [[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]],
            [[[0.0, 1.0], [1.0, 0.0]], [[2.0, 0.0], [0.0, 2.0]]],
        ]
    )
    assert gram_upper(features).tolist() == [[7.5, 1.25, 0.5], [0.5, 0.0, 2.0]]


def _capture_reducers(model: SentimentVectorNet) -> tuple[list[torch.Size], list[Tensor]]:
    """Record each 1×1 branch's input shape and output (after the ReLU) on the next forward."""
    inputs: list[torch.Size] = []
    outputs: list[Tensor] = []
    for branch in model.reducers:
        branch.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].shape))
        branch.register_forward_hook(lambda _m, _args, out: outputs.append(out.detach().clone()))
    return inputs, outputs


@pytest.mark.parametrize(
    ("backbone", "embedding_dim", "feature_dim"),
    [("efficientnet_lite0", None, 1280), ("resnet18", 32, 32), ("resnet50", None, 2048)],
)
def test_outputs_shapes_taps_and_how_the_vectors_are_built(backbone, embedding_dim, feature_dim):
    torch.manual_seed(0)
    model = SentimentVectorNet(backbone, weights=None, num_classes=8, embedding_dim=embedding_dim).eval()
    inputs, outputs = _capture_reducers(model)
    with torch.no_grad():
        out = model(_images())
    assert out["sentiment"].shape == (2, 680)
    assert out["sentiment_raw"].shape == (2, 680)
    assert out["embedding"].shape == (2, feature_dim)
    assert out["joint"].shape == (2, 680 + feature_dim)
    assert out["logits"].shape == (2, 8)
    # five taps, one per stride 2, 4, 8, 16, 32, with the documented channels; 16 filters each
    assert [tuple(s[1:]) for s in inputs] == [
        (c, SIZE // s, SIZE // s) for c, s in zip(TAP_CHANNELS[backbone], (2, 4, 8, 16, 32), strict=True)
    ]
    assert [o.shape[1] for o in outputs] == [16] * 5
    assert all(float(o.min()) >= 0 for o in outputs)  # ReLU after the 1×1 convolution
    # SV = the five Gram triangles in tap order, each at unit norm, concatenated and divided by sqrt(5)
    raw = torch.cat([gram_upper(o) for o in outputs], dim=1)
    torch.testing.assert_close(out["sentiment_raw"], raw)
    per_layer = torch.cat([F.normalize(gram_upper(o), dim=1) for o in outputs], dim=1) / math.sqrt(5)
    torch.testing.assert_close(out["sentiment"], per_layer)
    torch.testing.assert_close(out["sentiment"][:, :136].norm(dim=1), torch.full((2,), 1 / math.sqrt(5)))
    # joint = [SV, embedding / |embedding|] / sqrt(2)
    torch.testing.assert_close(out["joint"][:, :680] * math.sqrt(2), per_layer)
    torch.testing.assert_close(out["joint"][:, 680:] * math.sqrt(2), F.normalize(out["embedding"], dim=1))
    torch.testing.assert_close(out["fc"].norm(dim=1), torch.ones(2))
    torch.testing.assert_close(out["logits"], model.classifier(out["embedding"]))


def test_googlenet_the_papers_backbone_taps_and_shapes():
    torch.manual_seed(0)
    model = SentimentVectorNet("googlenet", weights=None, num_classes=8).eval()
    assert model.image_mean == list(IMAGENET_MEAN)
    inputs, _ = _capture_reducers(model)
    with torch.no_grad():
        out = model(_images())
    assert out["sentiment"].shape == (2, 680) and out["embedding"].shape == (2, 1024)
    assert [tuple(s[1:]) for s in inputs] == [(64, 32, 32), (192, 16, 16), (480, 8, 8), (832, 4, 4), (1024, 2, 2)]


@pytest.mark.slow
def test_gradients_reach_the_1x1_convs_and_the_backbone():
    torch.manual_seed(0)
    model = SentimentVectorNet("resnet18", weights=None, num_classes=8, embedding_dim=16)
    out = model(_images(4))
    weights = torch.randn(680, generator=torch.Generator().manual_seed(1))
    (out["sentiment"] * weights).sum().backward()
    for branch in model.reducers:  # every 1×1 convolution gets a gradient from the sentiment vector
        assert float(branch[0].weight.grad.abs().sum()) > 0
    assert float(model.backbone.net.conv1.weight.grad.abs().sum()) > 0  # down to the first convolution
    assert model.classifier.weight.grad is None  # the sentiment path does not touch the classifier

    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(_images(4))["logits"], torch.tensor([0, 1, 2, 3])).backward()
    assert float(model.classifier.weight.grad.abs().sum()) > 0
    assert float(model.backbone.net.layer1[0].conv1.weight.grad.abs().sum()) > 0
    assert all(branch[0].weight.grad is None for branch in model.reducers)


def test_lite0_imagenet_weights_load():
    model = SentimentVectorNet("efficientnet_lite0", weights="imagenet")
    assert model.image_mean == list(LITE_MEAN)
    shipped = load_state_dict_file(lite0_weights_path())
    net = model.backbone.net
    torch.testing.assert_close(net._conv_stem.weight, shipped["_conv_stem.weight"], rtol=0, atol=0)
    torch.testing.assert_close(net._blocks[10]._project_conv.weight, shipped["_blocks.10._project_conv.weight"])
    torch.testing.assert_close(net._bn1.running_var, shipped["_bn1.running_var"], rtol=0, atol=0)
    assert not hasattr(net, "_fc")
    random = SentimentVectorNet("efficientnet_lite0", weights=None)
    assert not torch.equal(random.backbone.net._conv_stem.weight, shipped["_conv_stem.weight"])


def test_local_weight_files_load_and_wrong_ones_are_config_errors(tmp_path):
    torch.manual_seed(0)
    resnet_file = tmp_path / "resnet18.pth"
    reference = resnet18(weights=None).state_dict()  # torchvision's layout, with its 1000-class fc
    torch.save(reference, resnet_file)
    model = SentimentVectorNet("resnet18", weights=resnet_file, num_classes=3)
    torch.testing.assert_close(model.backbone.net.layer3[1].conv2.weight, reference["layer3.1.conv2.weight"])

    googlenet_file = tmp_path / "googlenet.pth"
    with_aux = GoogLeNet(aux_logits=True, init_weights=False).state_dict()  # torchvision's file has aux heads
    torch.save(with_aux, googlenet_file)
    g = SentimentVectorNet("googlenet", weights=googlenet_file)
    torch.testing.assert_close(
        g.backbone.net.inception4e.branch1.conv.weight, with_aux["inception4e.branch1.conv.weight"]
    )

    with pytest.raises(ConfigError, match="not resnet18 weights"):
        SentimentVectorNet("resnet18", weights=lite0_weights_path())
    with pytest.raises(ConfigError, match="not resnet50 weights"):  # right names, wrong shapes
        SentimentVectorNet("resnet50", weights=resnet_file)
    with pytest.raises(ConfigError, match="weights file not found"):
        SentimentVectorNet("efficientnet_lite0", weights=tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="no ImageNet resnet50 weights ship offline"):
        SentimentVectorNet("resnet50", weights="imagenet")
    with pytest.raises(ConfigError, match="unknown metric backbone 'vgg16'"):
        SentimentVectorNet("vgg16", weights=None)


def test_param_groups_cover_every_trainable_parameter_once():
    model = SentimentVectorNet("resnet18", weights=None, num_classes=8, embedding_dim=16)
    for p in model.backbone.net.conv1.parameters():
        p.requires_grad_(False)  # frozen parameters stay out of the optimizer
    groups = model.param_groups(lr_conv=1e-4, lr_last=1e-3)
    assert [(g["name"], g["lr"]) for g in groups] == [("conv", 1e-4), ("last", 1e-3)]
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) == len(trainable)
    assert set(ids) == trainable
    last = {id(p) for p in groups[1]["params"]}
    assert last == {id(p) for p in [*model.embed.parameters(), *model.classifier.parameters()]}
    assert id(model.reducers[0][0].weight) in {id(p) for p in groups[0]["params"]}
    assert id(model.backbone.net.conv1.weight) not in set(ids)
    torch.optim.SGD(groups, lr=0.1, momentum=0.9)  # torch rejects a parameter given twice


@pytest.mark.slow
def test_save_load_round_trip_reproduces_outputs(tmp_path):
    torch.manual_seed(0)
    model = SentimentVectorNet("efficientnet_lite0", weights=None, num_classes=3, embedding_dim=16, dropout=0.3)
    model.train()
    with torch.no_grad():
        model(_images(4, seed=3))  # move the BatchNorm running statistics away from their initial values
    model.eval()
    x = _images(2, seed=4)
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "metric.pt"
    save_metric_model(path, model, {"label_set": "mikels8", "omega": 0.7})
    loaded, state = load_metric_model(path)
    assert not loaded.training
    assert state["label_set"] == "mikels8" and state["omega"] == 0.7
    assert loaded.settings() == {
        "backbone": "efficientnet_lite0",
        "num_classes": 3,
        "embedding_dim": 16,
        "filters": 16,
        "dropout": 0.3,
    }
    with torch.no_grad():
        got = loaded(x)
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="metric model not found"):
        load_metric_model(tmp_path / "none.pt")
    save_checkpoint(tmp_path / "other.pt", {"state_dict": {}, "dims": [1, 2, 3]})
    with pytest.raises(ConfigError, match="not a sentiment-vector model"):
        load_metric_model(tmp_path / "other.pt")
    model = SentimentVectorNet("efficientnet_lite0", weights=None)
    with pytest.raises(ValueError, match="reserved"):
        save_metric_model(tmp_path / "m.pt", model, {"state_dict": {}})
