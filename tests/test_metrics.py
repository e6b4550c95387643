import numpy as np
import pytest

from image_emotion.metrics import (
    accuracy,
    classification_report,
    confusion_matrix,
    per_class_accuracy,
    polarity_accuracy,
)


def test_confusion_and_accuracy():
    t, p = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2]
    cm = confusion_matrix(t, p, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert accuracy(t, p) == pytest.approx(4 / 6)
    np.testing.assert_allclose(per_class_accuracy(t, p, 4), [0.5, 1.0, 2 / 3, np.nan])
    assert accuracy([], []) == 0.0


def test_polarity_accuracy_maps_mikels_to_binary():
    # amusement(0) vs awe(1): both positive -> polarity correct; anger(4) vs awe(1): wrong
    assert polarity_accuracy([0, 4, 7], [1, 1, 5]) == pytest.approx(2 / 3)
    assert polarity_accuracy([3, 5], [5, 4], label_set="ekman6") == pytest.approx(
        0.5
    )  # joy->surprise ok, surprise->sadness


def test_report():
    r = classification_report([0, 1, 4], [0, 1, 5], "mikels8")
    assert r["accuracy"] == pytest.approx(2 / 3) and r["polarity_accuracy"] == 1.0
    assert r["per_class_accuracy"]["anger"] == 0.0 and r["per_class_accuracy"]["fear"] is None
    assert len(r["confusion_matrix"]) == 8 and r["num_samples"] == 3
