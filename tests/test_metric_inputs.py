"""The metric network's inputs streamed: images decoded when a batch asks for them, and a frozen backbone's maps
kept on disk and read a mini-batch at a time — with exactly the numbers of the in-memory tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from image_emotion.config import SyntheticConfig
from image_emotion.data.datasets import load_dataset
from image_emotion.data.emotions import MIKELS8
from image_emotion.data.synthetic import generate
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.models.metric import SentimentVectorNet
from image_emotion.training.metric import MetricObjective, TrunkCache, embed, image_tensor, train_metric_net
from image_emotion.training.metric_inputs import ImageRows, StreamedTrunk


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """24 synthetic images at 64 px, their labels and an untrained network (read-only for the tests)."""
    root = generate(
        tmp_path_factory.mktemp("mi") / "syn", SyntheticConfig.one_set(num_images=24, image_size=64, seed=5)
    )
    manifest = load_dataset("synthetic", root).manifest
    data = PreparedDataset(manifest=manifest, root=root, name="synthetic", label_set="mikels8")
    torch.manual_seed(0)
    net = SentimentVectorNet("efficientnet_lite0", weights=None, num_classes=8, embedding_dim=16).eval()
    labels = torch.tensor([MIKELS8.index(x) for x in manifest["label"]])
    return data, labels, net


def test_image_rows_decode_what_the_in_memory_tensor_holds(small_set):
    data, _, net = small_set
    whole = image_tensor(data, 48, net.image_mean, net.image_std)
    rows = ImageRows(data, 48, net.image_mean, net.image_std)
    assert len(rows) == 24
    assert torch.equal(rows[[5, 0, 23]], whole[[5, 0, 23]])
    assert torch.equal(rows[2:6], whole[2:6])
    part = rows.select(np.array([20, 3, 7]))  # a view: nothing read yet
    assert len(part) == 3 and torch.equal(part[torch.tensor([2, 0])], whole[[7, 20]])
    assert torch.equal(part.select([1])[0:1], whole[3:4])


def test_a_streamed_trunk_trains_and_embeds_exactly_as_the_cached_one(small_set, tmp_path):
    data, labels, net = small_set
    images = ImageRows(data, 48, net.image_mean, net.image_std)
    streamed = StreamedTrunk(net, images, tmp_path / "trunk", batch_size=10)
    # the backbone run in the streamed trunk's chunks of 10: what differs is only where the maps are kept (a
    # convolution over 10 images and over 64 may round differently, by 1e-9, with one thread)
    in_memory = TrunkCache(net, image_tensor(data, 48, net.image_mean, net.image_std), batch_size=10)
    maps_a, pooled_a = streamed.batch(torch.tensor([3, 17, 0]))
    maps_b, pooled_b = in_memory.batch(torch.tensor([3, 17, 0]))
    assert len(maps_a) == len(maps_b) == 5 and torch.equal(pooled_a, pooled_b)
    assert all(torch.equal(a, b) for a, b in zip(maps_a, maps_b, strict=True))

    train = np.arange(0, 24, 2)
    results = []
    for trunk in (streamed.subset(train), in_memory.subset(train)):
        model = SentimentVectorNet("efficientnet_lite0", weights=None, num_classes=8, embedding_dim=16)
        model.load_state_dict(net.state_dict())
        losses = train_metric_net(
            model, images.select(train), labels[train], "mikels8", MetricObjective(), epochs=2, batch_size=8,
            min_per_class=1, lr_conv=0.05, lr_last=0.05, freeze_backbone=True, trunk=trunk,
        )  # fmt: skip
        results.append((losses, embed(model, images, batch_size=7, trunk=streamed if not results else in_memory)))
    (losses_a, out_a), (losses_b, out_b) = results
    assert losses_a == losses_b and len(losses_a) == 2
    assert out_a.keys() == out_b.keys() and all(np.array_equal(out_a[k], out_b[k]) for k in out_a)
    assert 0 < streamed.store.largest_read <= 8  # one mini-batch of maps at a time, never the whole set
