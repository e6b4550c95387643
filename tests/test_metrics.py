"""Classification metrics: accuracy, per-class accuracy (recall), the confusion matrix and the 8 -> 2 polarity
accuracy agree with hand-computed cases and with scikit-learn on seeded random labels."""

import numpy as np
import pytest
from sklearn import metrics as skm

from image_emotion.metrics import (
    accuracy,
    classification_report,
    confusion_matrix,
    per_class_accuracy,
    polarity_accuracy,
)

# the paper's polarity: amusement, awe, contentment, excitement positive (Mikels-8 ids 0-3); joy and surprise
# (Ekman-6 ids 3 and 5) positive
MIKELS_POSITIVE = np.array([True, True, True, True, False, False, False, False])
EKMAN_POSITIVE = np.array([False, False, False, True, False, True])


def _random_labels(seed, n=300, num_classes=8, present=8):
    """Seeded true/predicted labels; the true labels use only the first ``present`` classes."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, present, n)
    # right about half the time, so accuracy, recalls and the matrix are far from trivial
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, num_classes, n))
    return y_true.tolist(), y_pred.tolist()


def test_confusion_and_accuracy_hand_computed():
    t, p = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2]
    cm = confusion_matrix(t, p, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert accuracy(t, p) == pytest.approx(4 / 6)
    np.testing.assert_allclose(per_class_accuracy(t, p, 4), [0.5, 1.0, 2 / 3, np.nan])
    assert accuracy([], []) == 0.0


def test_confusion_matrix_rows_are_true_classes_not_predictions():
    # one sample of class 0 predicted as class 2: the count sits at row 0, column 2 (transposed would be [2, 0])
    np.testing.assert_array_equal(confusion_matrix([0], [2], 3), [[0, 0, 1], [0, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_and_accuracy_match_sklearn(seed):
    t, p = _random_labels(seed)
    np.testing.assert_array_equal(confusion_matrix(t, p, 8), skm.confusion_matrix(t, p, labels=range(8)))
    assert accuracy(t, p) == pytest.approx(skm.accuracy_score(t, p), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_accuracy_is_sklearn_recall_with_nan_for_absent_classes(seed):
    t, p = _random_labels(seed, present=6)  # classes 6 and 7 are predicted but never true: no recall
    expected = skm.recall_score(t, p, labels=range(8), average=None, zero_division=np.nan)
    got = per_class_accuracy(t, p, 8)
    assert np.isnan(got[6:]).all() and not np.isnan(got[:6]).any()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_polarity_accuracy_matches_sklearn_on_the_papers_polarity(seed):
    t, p = _random_labels(seed)
    expected = skm.accuracy_score(MIKELS_POSITIVE[t], MIKELS_POSITIVE[p])
    assert polarity_accuracy(t, p) == pytest.approx(expected, abs=1e-12)
    t6, p6 = _random_labels(seed, num_classes=6, present=6)
    expected6 = skm.accuracy_score(EKMAN_POSITIVE[t6], EKMAN_POSITIVE[p6])
    assert polarity_accuracy(t6, p6, label_set="ekman6") == pytest.approx(expected6, abs=1e-12)


def test_polarity_accuracy_maps_mikels_to_binary():
    # amusement(0) vs awe(1): both positive -> correct; anger(4) vs awe(1): wrong; sadness(7) vs disgust(5): correct
    assert polarity_accuracy([0, 4, 7], [1, 1, 5]) == pytest.approx(2 / 3)
    # joy(3) -> surprise(5): both positive, correct; surprise(5) -> sadness(4): wrong
    assert polarity_accuracy([3, 5], [5, 4], label_set="ekman6") == pytest.approx(0.5)


def test_report_hand_computed():
    r = classification_report([0, 1, 4], [0, 1, 5], "mikels8")
    assert r["accuracy"] == pytest.approx(2 / 3) and r["polarity_accuracy"] == 1.0
    assert r["per_class_accuracy"] == {
        "amusement": 1.0,
        "awe": 1.0,
        "contentment": None,
        "excitement": None,
        "anger": 0.0,
        "disgust": None,
        "fear": None,
        "sadness": None,
    }
    expected_cm = np.zeros((8, 8), dtype=int)
    expected_cm[0, 0] = expected_cm[1, 1] = expected_cm[4, 5] = 1
    assert r["confusion_matrix"] == expected_cm.tolist() and r["num_samples"] == 3


def test_report_matches_sklearn_and_has_polarity_only_where_defined():
    t, p = _random_labels(3, num_classes=2, present=2)
    r = classification_report(t, p, "binary")
    assert "polarity_accuracy" not in r  # binary labels are already polarities
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(t, p), abs=1e-12)
    assert r["confusion_matrix"] == skm.confusion_matrix(t, p, labels=[0, 1]).tolist()
    recall = skm.recall_score(t, p, labels=[0, 1], average=None)
    assert r["per_class_accuracy"] == pytest.approx({"negative": recall[0], "positive": recall[1]}, abs=1e-12)
    assert r["num_samples"] == 300
