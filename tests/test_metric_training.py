"""Training the sentiment-vector network: the joint loss goes down on a small synthetic set, a frozen backbone
stays exactly as loaded while the 1×1 convolutions learn, ω = 0 is plain cross-entropy, and embedding in batches
equals one forward pass."""

import itertools

import pytest
import torch

from image_emotion.config import SyntheticConfig
from image_emotion.data.datasets import load_dataset
from image_emotion.data.emotions import MIKELS8
from image_emotion.data.synthetic import generate
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.errors import ConfigError
from image_emotion.models.metric import SentimentVectorNet
from image_emotion.training.metric import MetricObjective, embed, image_tensor, train_metric_net


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """32 synthetic images at 64 px as a normalised tensor ``(32, 3, 64, 64)`` and their labels."""
    root = generate(tmp_path_factory.mktemp("m") / "syn", SyntheticConfig.one_set(num_images=32, image_size=64, seed=4))
    manifest = load_dataset("synthetic", root).manifest
    data = PreparedDataset(manifest=manifest, root=root, name="synthetic", label_set="mikels8")
    net = SentimentVectorNet("efficientnet_lite0", weights=None, num_classes=8)
    images = image_tensor(data, 64, net.image_mean, net.image_std)
    return images, torch.tensor([MIKELS8.index(x) for x in manifest["label"]])


@pytest.mark.slow
def test_the_joint_loss_goes_down(small_set):
    images, labels = small_set
    torch.manual_seed(0)
    net = SentimentVectorNet("efficientnet_lite0", weights=None, num_classes=8, embedding_dim=32)
    losses = train_metric_net(
        net, images, labels, "mikels8", MetricObjective(), epochs=12, batch_size=16, min_per_class=1,
        lr_conv=0.05, lr_last=0.05,
    )  # fmt: skip
    assert len(losses) == 12 and losses[-1] < 0.5 * losses[0]


def test_a_frozen_backbone_is_left_as_loaded_and_the_reducers_learn(small_set):
    images, labels = small_set
    net = SentimentVectorNet("efficientnet_lite0", weights="imagenet", num_classes=8)
    backbone = {k: v.clone() for k, v in net.backbone.state_dict().items()}  # BatchNorm statistics included
    reducers = [p.clone() for p in net.reducers.parameters()]
    train_metric_net(
        net, images, labels, "mikels8", MetricObjective(), epochs=1, batch_size=16, min_per_class=1,
        freeze_backbone=True,
    )  # fmt: skip
    assert all(torch.equal(v, net.backbone.state_dict()[k]) for k, v in backbone.items())
    assert any(not torch.equal(a, b) for a, b in zip(reducers, net.reducers.parameters(), strict=True))


def test_omega_zero_is_cross_entropy_and_one_is_the_metric_loss_alone(small_set):
    images, labels = small_set
    net = SentimentVectorNet("efficientnet_lite0", weights=None, num_classes=8).eval()
    with torch.no_grad():
        out = net(images[:16])
    g = torch.Generator().manual_seed(0)
    ce = torch.nn.functional.cross_entropy(out["logits"], labels[:16])
    assert torch.equal(MetricObjective(omega=0.0)(out, labels[:16], "mikels8", g), ce)
    from image_emotion.losses import triplet_loss

    only_triplet = MetricObjective(omega=1.0, loss="triplet", feature="fc", sampling="hard")
    expected = triplet_loss(out["fc"], labels[:16], 0.2, "hard")
    assert torch.allclose(only_triplet(out, labels[:16], "mikels8", g), expected)


def test_embedding_in_batches_equals_one_forward(small_set):
    images, _ = small_set
    net = SentimentVectorNet("efficientnet_lite0", weights=None, num_classes=8).eval()
    with torch.no_grad():
        whole = net(images)
    parts = embed(net, images, batch_size=5)
    assert parts["sentiment"].shape == (32, 680)
    assert torch.allclose(torch.from_numpy(parts["sentiment"]), whole["sentiment"], atol=1e-5)


def test_a_bad_objective_is_refused():
    with pytest.raises(ConfigError, match="metric objective"):
        MetricObjective(loss="contrastive")


def test_training_on_cached_backbone_maps_equals_running_the_frozen_backbone(small_set):
    """``TrunkCache`` is an optimisation only: the trained weights match those of the plain frozen loop."""
    images, labels = small_set
    from image_emotion.training.metric import TrunkCache

    def trained(use_cache: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(3)
        net = SentimentVectorNet("efficientnet_lite0", weights="imagenet", num_classes=8, embedding_dim=16)
        trunk = TrunkCache(net, images) if use_cache else None  # else the frozen backbone runs in every step
        train_metric_net(
            net, images, labels, "mikels8", MetricObjective(), epochs=2, batch_size=16, min_per_class=1, seed=1,
            freeze_backbone=True, trunk=trunk, cache_trunk=use_cache,
        )  # fmt: skip
        return {k: v for k, v in net.state_dict().items() if not k.startswith("backbone.")}

    cached, plain = trained(True), trained(False)
    assert cached.keys() == plain.keys()
    assert all(torch.allclose(cached[k], plain[k], atol=1e-5) for k in cached)
    untrained = SentimentVectorNet("efficientnet_lite0", weights="imagenet", num_classes=8, embedding_dim=16)
    assert not torch.allclose(cached["classifier.weight"], untrained.classifier.weight)


@pytest.mark.slow
def test_the_centre_loss_row_trains_and_needs_its_centres(small_set):
    images, labels = small_set
    torch.manual_seed(0)
    net = SentimentVectorNet("efficientnet_lite0", weights=None, num_classes=8, embedding_dim=16)
    objective = MetricObjective(omega=0.5, loss="centre", feature="fc")
    losses = train_metric_net(
        net, images, labels, "mikels8", objective, epochs=6, batch_size=16, min_per_class=1, lr_conv=0.05,
        lr_last=0.05,
    )  # fmt: skip
    assert all(b < a for a, b in itertools.pairwise(losses)), losses  # the centres and features meet
    with pytest.raises(ConfigError, match="centres"):
        objective(net(images[:4]), labels[:4], "mikels8", torch.Generator())
