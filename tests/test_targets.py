"""The targets of L_ed (``emotions.target``): eq. 4 with p* = the label's vote share (the params default where an
image has no votes, as in FI), the votes themselves, or one-hot; and eq. 4 on Ekman-6 with distances on Plutchik's
wheel, so that L_ed differs from L_cls on EmotionROI too. Expected values are computed by hand."""

from fractions import Fraction

import numpy as np
import pytest

from image_emotion.data import emotions as E
from image_emotion.data.manifest import make_manifest
from image_emotion.data.torch_data import PreparedDataset

EKMAN_BY_HAND = {  # 1 + steps on joy-trust-fear-surprise-sadness-disgust-anger-anticipation
    ("joy", "fear"): 3, ("joy", "surprise"): 4, ("joy", "sadness"): 5, ("joy", "disgust"): 4, ("joy", "anger"): 3,
    ("fear", "surprise"): 2, ("fear", "sadness"): 3, ("fear", "disgust"): 4, ("fear", "anger"): 5,
    ("surprise", "sadness"): 2, ("surprise", "disgust"): 3, ("surprise", "anger"): 4,
    ("sadness", "disgust"): 2, ("sadness", "anger"): 3, ("disgust", "anger"): 2,
}  # fmt: skip


def test_ekman_distances_are_plutchiks_wheel():
    m = E.distance_matrix("ekman6")
    labels = E.EKMAN6.labels
    for (a, b), d in EKMAN_BY_HAND.items():
        assert m[labels.index(a), labels.index(b)] == m[labels.index(b), labels.index(a)] == d
    assert np.diag(m).tolist() == [1.0] * 6
    assert E.distance_matrix("emotion6")[6].tolist() == [3.0] * 6 + [1.0]  # neutral: the centre
    assert E.distance_matrix("binary").tolist() == [[1.0, 2.0], [2.0, 1.0]]


def test_eq4_on_ekman6_by_hand():
    f = E.emotion_distribution("joy", 0.6, "ekman6")
    # the other five share 0.4 in proportion to 1/dis: 1/3 + 1/4 + 1/3 + 1/5 + 1/4 = 41/30
    share = {"anger": Fraction(4, 41), "disgust": Fraction(3, 41), "fear": Fraction(4, 41),
             "sadness": Fraction(12, 205), "surprise": Fraction(3, 41)}  # fmt: skip
    for label, value in share.items():
        assert f[E.EKMAN6.index(label)] == pytest.approx(float(value))
    assert f[E.EKMAN6.index("joy")] == pytest.approx(0.6)


def _prepared(tmp_path) -> PreparedDataset:
    votes = [10, 0, 6, 0, 0, 0, 0, 4]  # Mikels-8 order: amusement 10 of 20, contentment 6, sadness 4
    rows = [
        {"path": "a.jpg", "label": "amusement", "label_set": "mikels8", "distribution": [v / 20 for v in votes]},
        {"path": "b.jpg", "label": "fear", "label_set": "mikels8"},  # no votes (FI)
    ]
    return PreparedDataset(make_manifest(rows), tmp_path, "t", "mikels8")


def test_eq4_targets_use_the_vote_share_as_p_star_and_the_default_without_votes(tmp_path):
    t = _prepared(tmp_path).distributions(0.7, "eq4").double().numpy()
    amusement, fear = E.MIKELS8.index("amusement"), E.MIKELS8.index("fear")
    assert t[0, amusement] == pytest.approx(0.5) and t[1, fear] == pytest.approx(0.7)
    # wheel: contentment-awe-amusement-excitement-anger-fear-disgust-sadness; from amusement dis(awe) = 2,
    # dis(sadness) = 4: their shares of the other 0.5 stand as 1/2 : 1/4
    assert t[0, E.MIKELS8.index("awe")] / t[0, E.MIKELS8.index("sadness")] == pytest.approx(2.0)
    assert (t[0] > 0).all() and t.sum(1) == pytest.approx([1.0, 1.0])


def test_votes_and_onehot_targets(tmp_path):
    data = _prepared(tmp_path)
    votes = data.distributions(0.7, "votes").double().numpy()
    assert votes[0].tolist() == pytest.approx([0.5, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.2])
    assert votes[1] == pytest.approx(E.emotion_distribution("fear", 0.7))  # no votes: eq. 4 with the default
    onehot = data.distributions(0.7, "onehot").double().numpy()
    assert onehot.argmax(1).tolist() == [E.MIKELS8.index("amusement"), E.MIKELS8.index("fear")]
    assert onehot.sum(1).tolist() == [1.0, 1.0] and onehot.max(1).tolist() == [1.0, 1.0]


def test_ekman_images_without_votes_get_eq4_not_a_one_hot(tmp_path):
    rows = [{"path": "a.jpg", "label": "fear", "label_set": "ekman6"}]
    data = PreparedDataset(make_manifest(rows), tmp_path, "emotionroi", "ekman6")
    t = data.distributions(0.7, "eq4").double().numpy()[0]
    assert t[E.EKMAN6.index("fear")] == pytest.approx(0.7)
    assert t[E.EKMAN6.index("surprise")] > t[E.EKMAN6.index("anger")] > 0  # neighbour 2 vs opposite 5
