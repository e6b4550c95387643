"""Temperature scaling and the expected calibration error (``calibration.py``), against hand-computed values and a
known temperature recovered from labels drawn at it."""

from __future__ import annotations

import math

import pytest
import torch

from image_emotion.calibration import expected_calibration_error, fit_temperature, nll, reliability


def test_ece_by_hand():
    # predicted 0, 1, 0, 1 with confidences 0.85 (right), 0.85 (wrong), 0.55 (right), 0.75 (wrong); 10 bins
    probabilities = torch.tensor([[0.85, 0.15], [0.15, 0.85], [0.55, 0.45], [0.25, 0.75]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 0])
    # (0.8, 0.9]: two, confidence 0.85, accuracy 0.5; (0.5, 0.6]: one, 0.55, 1.0; (0.7, 0.8]: one, 0.75, 0.0
    expected = 2 / 4 * abs(0.5 - 0.85) + 1 / 4 * abs(1.0 - 0.55) + 1 / 4 * abs(0.0 - 0.75)
    assert expected_calibration_error(probabilities, labels, bins=10) == pytest.approx(expected)
    rows = reliability(probabilities, labels, bins=10)
    assert [r["count"] for r in rows] == [0, 0, 0, 0, 0, 1, 0, 1, 2, 0]
    assert rows[8]["confidence"] == pytest.approx(0.85) and rows[8]["accuracy"] == 0.5


def test_a_confidence_on_a_bin_edge_falls_in_the_lower_bin():
    rows = reliability(torch.tensor([[0.5, 0.5 - 1e-9], [1.0, 0.0]]), torch.tensor([0, 0]), bins=2)
    assert [r["count"] for r in rows] == [1, 1]  # 0.5 in (0, 0.5], 1.0 in (0.5, 1]


def test_the_temperature_the_labels_were_drawn_at_is_recovered():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20_000, 8, generator=generator) * 3
    true_temperature = 2.5
    labels = torch.multinomial((logits / true_temperature).softmax(-1), 1, generator=generator)[:, 0]
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    for other in (fitted * 0.9, fitted * 1.1):  # the minimum of the NLL
        assert nll(logits, labels, fitted) < nll(logits, labels, other)
    before = expected_calibration_error(logits.softmax(-1), labels)
    after = expected_calibration_error((logits / fitted).softmax(-1), labels)
    assert before > 0.1 and after < 0.02  # over-confident by 2.5x, then calibrated
    assert torch.equal((logits / fitted).argmax(1), logits.argmax(1))  # accuracy untouched


def test_nll_matches_its_definition():
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    by_hand = -(math.log(math.exp(1.0) / (math.exp(1.0) + 1)) + math.log(1 / (1 + math.exp(0.5)))) / 2
    assert nll(logits, labels, 2.0) == pytest.approx(by_hand)


def test_no_validation_rows_leave_the_logits_as_they_are():
    assert fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 1.0
    assert expected_calibration_error(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 0.0


@pytest.mark.e2e
def test_the_classifier_is_calibrated_on_validation_and_evaluate_reports_both(tiny_run):
    import json

    from image_emotion.models.multilevel import load_head
    from image_emotion.training.heads import head_logits, load_head_data, split_index

    work, config = tiny_run
    head, state = load_head(work / "models/classifier/head.pt")
    data, head_data, _ = load_head_data(work / "prepared/main", work / "features/main", config.emotions)
    val = head_data.select(split_index(data, "val"))
    logits = head_logits(head, val)
    assert nll(logits, val.labels, state["temperature"]) <= nll(logits, val.labels, 1.0)  # it lowered val NLL
    figures = json.loads((work / "metrics/evaluate.json").read_text())["calibration"]
    assert figures["temperature"] == state["temperature"] and figures["bins"] == 15
    assert set(figures) >= {"test_ece_before", "test_ece_after", "val_ece_before", "val_ece_after"}
    assert (work / "plots/reliability.png").stat().st_size > 1000
