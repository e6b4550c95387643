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


def _separable_data(n: int = 96, classes: int = 4) -> tuple:
    """Features whose class lives in a few dimensions, with soft vote distributions; dims (Dg, Dl, K)."""
    from image_emotion.training.heads import HeadData

    g = torch.Generator().manual_seed(3)
    labels = torch.arange(n) % classes
    global_features = torch.randn(n, 12, generator=g)
    global_features[torch.arange(n), labels] += 3.0
    regions = torch.randn(n, 2, 6, generator=g)
    dist = torch.softmax(torch.randn(n, classes, generator=g) + 4 * torch.nn.functional.one_hot(labels, classes), 1)
    features = {"global": global_features, "emotional": regions, "object": regions.flip(1)}
    return HeadData(features, labels, dist, dist.gather(1, labels[:, None])[:, 0]), (12, 6, 2)


def test_the_vectorized_sweep_trains_the_heads_separate_fits_train():
    from image_emotion.config import HeadTraining
    from image_emotion.training.heads import train_head, train_lambda_heads

    data, dims = _separable_data()
    hp = HeadTraining(epochs=6, batch_size=32, dropout=0.5, lr=0.05)
    lams = [0.0, 0.4, 1.0]
    together = train_lambda_heads(data, dims, 4, "global+emotional", lams, hp, hidden=16)
    for lam, head in zip(lams, together, strict=True):
        alone = train_head(data, dims, 4, "global+emotional", "multi", lam, hp, 16)
        for name, weight in alone.state_dict().items():
            torch.testing.assert_close(head.state_dict()[name], weight, rtol=1e-5, atol=1e-6, msg=f"λ={lam} {name}")
    # and the heads did learn different things: λ changes the gradient from the first step
    w = [h.fc2.weight for h in together]
    assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[1], w[2])


def test_the_vectorized_sweep_refuses_a_lambda_outside_zero_one():
    import pytest

    from image_emotion.config import HeadTraining
    from image_emotion.errors import ConfigError
    from image_emotion.training.heads import train_lambda_heads

    data, dims = _separable_data()
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\], got 1.5"):
        train_lambda_heads(data, dims, 4, "global+emotional", [0.5, 1.5], HeadTraining(epochs=1), hidden=8)
