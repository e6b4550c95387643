"""Head fitting: every mini-batch of an epoch is of near-equal size (a one-image last batch derailed SGD with
momentum on real features: 641 training images trained to 35% instead of 95%)."""

import torch

from image_emotion.training.heads import batches


def test_an_epoch_is_split_into_near_equal_batches_covering_every_image_once():
    parts = batches(641, 128, torch.Generator().manual_seed(0))
    assert [len(p) for p in parts] == [107] * 5 + [106]  # not 5 x 128 + 1
    assert sorted(torch.cat(parts).tolist()) == list(range(641))
    assert [len(p) for p in batches(100, 128, torch.Generator().manual_seed(0))] == [100]
    assert [len(p) for p in batches(256, 128, torch.Generator().manual_seed(0))] == [128, 128]
