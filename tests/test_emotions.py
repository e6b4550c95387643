"""Label sets and Mikels' emotion wheel: wheel distances, eq. 4's emotion distribution (hand-computed), vote
distributions and ties, and the mappings between label sets."""

import itertools

import numpy as np
import pytest

from image_emotion.data import emotions as E
from image_emotion.errors import ConfigError


def test_wheel_distance_is_symmetric_and_bounded():
    d = E.mikels_distance_matrix()
    assert d.shape == (8, 8)
    np.testing.assert_array_equal(d, d.T)
    np.testing.assert_array_equal(np.diag(d), np.ones(8))
    assert d.min() == 1 and d.max() == 5
    # on a circle of 8 every class has exactly one opposite (distance 5) and two neighbours (distance 2)
    for row in d:
        assert sorted(row.tolist()) == [1, 2, 2, 3, 3, 4, 4, 5]
    # wheel: contentment - awe - amusement - excitement - anger - fear - disgust - sadness - (contentment)
    # row amusement, in Mikels-8 order (amusement, awe, contentment, excitement, anger, disgust, fear, sadness)
    np.testing.assert_array_equal(d[0], [1, 2, 3, 2, 3, 5, 4, 4])
    np.testing.assert_array_equal(d[7], [4, 3, 2, 5, 4, 2, 3, 1])  # sadness meets contentment across the seam


def test_wheel_neighbours_share_polarity_except_at_the_two_seams():
    order = E.WHEEL_ORDER
    changes = [
        (a, b)
        for a, b in zip(order, order[1:] + order[:1], strict=True)
        if E.MIKELS8.polarity(a) != E.MIKELS8.polarity(b)
    ]
    assert changes == [("excitement", "anger"), ("sadness", "contentment")]


def test_distance_triangle_inequality():
    for a, b, c in itertools.product(E.MIKELS8.labels, repeat=3):
        assert E.wheel_steps(a, c) <= E.wheel_steps(a, b) + E.wheel_steps(b, c)


def test_eq4_hand_computed_for_amusement():
    # wheel: contentment - awe - amusement - excitement - anger - fear - disgust - sadness
    # dis(amusement, .) = awe 2, contentment 3, excitement 2, anger 3, fear 4, disgust 5, sadness 4
    p = 0.6
    f = E.emotion_distribution("amusement", p)
    inv = {
        "awe": 1 / 2,
        "contentment": 1 / 3,
        "excitement": 1 / 2,
        "anger": 1 / 3,
        "fear": 1 / 4,
        "disgust": 1 / 5,
        "sadness": 1 / 4,
    }
    z = sum(inv.values())
    assert f[E.MIKELS8.index("amusement")] == pytest.approx(0.6)
    for label, w in inv.items():
        assert f[E.MIKELS8.index(label)] == pytest.approx(w / z * 0.4)
    # z = 2/2 + 2/3 + 2/4 + 1/5 = 71/30, so awe gets 0.4 * (1/2) * 30/71 = 6/71
    assert f[E.MIKELS8.index("awe")] == pytest.approx(6 / 71)


@pytest.mark.parametrize("p", [0.3, 0.7, 1.0])
def test_each_distribution_sums_to_one_and_peaks_at_the_dominant_class(p):
    m = E.emotion_distribution_matrix(p)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.diag(m), p)  # p* on the dominant class
    if p == 1.0:
        np.testing.assert_array_equal(m, np.eye(8))  # nothing left to share
    if p > 0.5:
        np.testing.assert_array_equal(m.argmax(axis=1), np.arange(8))
    # closer emotions get more mass
    d = E.mikels_distance_matrix()
    for j in range(8):
        for i, k in itertools.permutations([x for x in range(8) if x != j], 2):
            if d[j, i] < d[j, k] and p < 1.0:
                assert m[j, i] > m[j, k]


def test_bad_dominant_probability_is_a_config_error():
    for p in (0.0, 1.5, -0.2):
        with pytest.raises(ConfigError, match=rf"p\* must be in \(0, 1\], got {p}"):
            E.emotion_distribution(0, p)


def test_votes_to_distribution_and_ties():
    np.testing.assert_allclose(E.distribution_from_votes([1, 3, 0, 0]), [0.25, 0.75, 0, 0])
    np.testing.assert_allclose(E.distribution_from_votes([2] * 8), [1 / 8] * 8)
    with pytest.raises(ConfigError, match="sum to zero"):
        E.distribution_from_votes([0, 0])
    with pytest.raises(ConfigError, match="non-negative"):
        E.distribution_from_votes([1, -1])
    assert E.dominant_label({"a": 3, "b": 1}) == "a" and E.dominant_label({"a": 1, "b": 3}) == "b"
    assert E.dominant_label({"a": 3, "b": 3}) is None
    assert E.dominant_label({"a": 0, "b": 0}) is None


def test_label_sets_and_mappings():
    assert len(E.MIKELS8) == 8 and len(E.EKMAN6) == 6 and len(E.EMOTION6) == 7 and len(E.BINARY) == 2
    assert [E.map_label(x, "mikels8", "binary") for x in E.MIKELS8.labels] == ["positive"] * 4 + ["negative"] * 4
    assert E.map_label("surprise", "ekman6", "binary") == "positive"
    assert E.map_label("awe", "mikels8", "ekman6") == "surprise"
    assert E.map_label("fear", "mikels8", "ekman6") == "fear"
    with pytest.raises(ConfigError, match="neutral"):
        E.map_label("neutral", "emotion6", "binary")
    with pytest.raises(ConfigError, match="no mapping"):
        E.map_label("joy", "ekman6", "mikels8")
    with pytest.raises(ConfigError, match="expected one of"):
        E.MIKELS8.index("happiness")
    with pytest.raises(ConfigError, match="unknown label set"):
        E.get_label_set("plutchik")


def test_polarity_or_none_is_none_only_for_a_label_without_one():
    from image_emotion.data.emotions import get_label_set

    assert get_label_set("mikels8").polarity_or_none("awe") == "positive"
    assert get_label_set("ekman6").polarity_or_none("sadness") == "negative"
    assert get_label_set("emotion6").polarity_or_none("neutral") is None
    with pytest.raises(ConfigError, match="unknown mikels8 label 'joy'"):
        get_label_set("mikels8").polarity_or_none("joy")
