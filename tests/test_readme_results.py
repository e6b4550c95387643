"""README.md's results block: generated from metrics/ (`image-emotion readme-results`), fresh against the committed
metrics/, following a changed figure, and a one-line error naming a missing file or key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from image_emotion.cli import main
from image_emotion.report.readme_results import BEGIN, END, MetricsError, render, update

STALE = "README.md's results are stale; run `image-emotion readme-results`"


def _interval(difference: float, low: float, high: float, images: int, **extra) -> dict:
    return {"difference": difference, "low": low, "high": high, "images": images, "level": 0.95, **extra}


def _tiny_metrics(root: Path) -> Path:
    """A hand-made metrics folder: every figure the block shows, with round values."""
    files = {
        "classifier.json": {
            "mode": "global+emotional",
            "best_lambda": 0.4,
            "chance_accuracy": 0.125,
            "test_accuracy": 0.625,
            "test_polarity_accuracy": 0.875,
            "binary_test_accuracy": 0.8,
            "loss_variants_test_accuracy": {"cls": 0.5, "multi": 0.625, "p": 0.375},
            "loss_variants_test_polarity_accuracy": {"cls": 0.75, "multi": 0.875, "p": 0.625},
            "claims": {
                "regions_over_global": _interval(12.5, 2.5, 25.0, 8, split="test", verdict="holds"),
                "emotional_over_object": _interval(-12.5, -30.0, -1.0, 8, split="test", verdict="does not hold"),
                "multi_over_cls": _interval(12.5, -5.0, 30.0, 8, split="test", verdict="inconclusive"),
                "lambda_inside": {
                    "lambda": 0.4,
                    "split": "val",
                    "verdict": "inconclusive",
                    "versus_ends": {"1.0": _interval(-5.0, -15.0, 5.0, 4), "0.0": _interval(10.0, 2.5, 20.0, 4)},
                },
            },
        },
        "ablation.json": [
            {"mode": "global", "test_accuracy": 0.5, "test_polarity_accuracy": 0.75},
            {"mode": "global+emotional", "test_accuracy": 0.0, "test_polarity_accuracy": 0.0},  # shown from classifier
        ],
        "evaluate.json": {
            "num_val_images": 4,
            "num_test_images": 8,
            "calibration": {
                "bins": 15,
                "temperature": 0.5,
                "val_ece_before": 0.4,
                "val_ece_after": 0.2,
                "test_ece_before": 0.3,
                "test_ece_after": 0.1,
            },
        },
        "detector.json": {
            "train_images": 16,
            "epochs": 3,
            "holdout_split": "val",
            "recall_at_2": 0.75,
            "object_recall_at_2": 0.25,
        },
        "transfer/small.json": {
            "folds": 5,
            "accuracy_mean": 0.6,
            "accuracy_std": 0.05,
            "accuracy_2class_mean": 0.8,
            "accuracy_2class_std": 0.1,
        },
        "retrieval.json": {
            "feature": "sentiment",
            "gallery_size": 24,
            "main": {
                "protocol": "test queries against the train split",
                "num_queries": 8,
                "accuracy": 0.375,
                "nn": 0.5,
                "ft": 0.25,
                "st": 0.125,
                "map8": 0.3,
                "map2": 0.6,
                "dcg": 0.7,
                "anmrr": 0.4,
            },
        },
        "retrieval_transfer/small.json": {
            "set": "small",
            "protocol": "fine-tuned on 4 folds, tested on the fifth (80/20), 5 folds",
            "images": 10,
            "accuracy": 0.45,
            "nn": 0.15,
            "ft": 0.25,
            "st": 0.35,
            "map8": 0.45,
            "map2": 0.55,
            "dcg": 0.65,
            "anmrr": 0.75,
            "leave_one_out": {
                "num_queries": 10,
                "nn": 0.1,
                "ft": 0.2,
                "st": 0.3,
                "map8": 0.4,
                "map2": 0.5,
                "dcg": 0.6,
                "anmrr": 0.7,
            },
        },
        "generative.json": {
            "label_set": "mikels8",
            "emotion_models": {
                "binary": {
                    "num_samples": 12,
                    "accuracy": 0.75,
                    "generated_valid": 1.0,
                    "generation_agrees_with_ranking": 0.5,
                },
                "mikels8": {
                    "num_samples": 8,
                    "accuracy": 0.25,
                    "generated_valid": 1.0,
                    "generation_agrees_with_ranking": 1.0,
                },
            },
            "probe_accuracy": {"binary": 0.5, "mikels8": 0.375},
            "low_resource": [
                {"emotion_model": "mikels8", "shots": 1, "train_images": 8, "generative": 0.125, "probe": 0.25},
                {"emotion_model": "binary", "shots": 1, "train_images": 8, "generative": 0.5, "probe": 0.625},
            ],
        },
    }
    for name, figures in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(figures))
    return root


def test_committed_readme_results_are_fresh_against_committed_metrics(repo_root, tmp_path):
    """Against metrics/ as committed (``git archive HEAD``): a clean clone's ``./setup.sh`` re-runs the pipeline
    and rewrites metrics/ before the tests, with figures that may differ in the last digit on another CPU. A
    working tree whose metrics/ were just regenerated (not committed yet) may match those instead."""
    import subprocess

    archive = subprocess.run(["git", "-C", str(repo_root), "archive", "HEAD", "metrics"], capture_output=True)
    if archive.returncode != 0:
        pytest.skip("not a git checkout: no committed metrics/ to compare with")
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive.stdout, check=True)
    committed = update(repo_root / "README.md", tmp_path / "metrics", check=True)
    assert committed or update(repo_root / "README.md", repo_root / "metrics", check=True), STALE


def test_the_block_shows_each_figure_of_a_hand_made_metrics_folder(tmp_path):
    text = render(_tiny_metrics(tmp_path))
    expected = [
        "| chance | 12.5 % | — |",
        "| global only | 50.0 % | 75.0 % |",
        "| global + emotional regions: the method, L_multi at λ* = 0.4 (chosen on validation) | 62.5 % | 87.5 % |",
        "| the same with L_cls (λ = 0) / L_p | 50.0 % / 37.5 % | 75.0 % / 62.5 % |",
        "| the 2-class model | — | 80.0 % |",
        "| transfer to `small`, 5-fold one-against-all (mean ± std) | 60.0 ± 5.0 % | 80.0 ± 10.0 % |",
        "| global + emotional regions beat global only | 8 test images | +12.5 [+2.5, +25.0] (95 %) | **holds** |",
        "| emotional regions beat object regions (both with global) | 8 test images | -12.5 [-30.0, -1.0] (95 %) "
        "| **does not hold** |",
        "| L_multi beats L_cls | 8 test images | +12.5 [-5.0, +30.0] (95 %) | **inconclusive** |",
        "| λ* = 0.4 lies inside (0, 1), beating both ends | 4 validation images "
        "| vs λ = 0: +10.0 [+2.5, +20.0]; vs λ = 1: -5.0 [-15.0, +5.0] (95 %) | **inconclusive** |",
        "| calibration: ECE, 15 bins | T = 1 | T = 0.500 (fitted on validation) |",
        "| validation (4 images) | 0.400 | 0.200 |",
        "| test (8 images) | 0.300 | 0.100 |",
        "| detector: emotional branch, 16 training images, 3 epochs | recall@2 |",
        "| ground-truth regions among its top K emotional regions (validation) | 75.0 % |",
        "| the same among the object detector's top K object regions (Table 1's object regions, validation) | 25.0 % |",
        "| Yang et al.: retrieval with the sentiment vector (SV) | queries | accuracy | NN | FT | ST | mAP8 | mAP2 "
        "| DCG | ANMRR |",
        "| test queries against the train split (24 images) | 8 | 37.5 % | 0.500 | 0.250 | 0.125 | 0.300 | 0.600 "
        "| 0.700 | 0.400 |",
        "| `small`, fine-tuned on each 80 %, tested on its 20 % (mean of 5 folds) | 10 | 45.0 % | 0.150 | 0.250 "
        "| 0.350 | 0.450 | 0.550 | 0.650 | 0.750 |",
        "| `small`, leave-one-out with the main model unchanged | 10 | — | 0.100 | 0.200 | 0.300 | 0.400 | 0.500 "
        "| 0.600 | 0.700 |",
        "| Mikels-8 | 8 | 25.0 % | 37.5 % | 62.5 % | 100.0 % | 100.0 % |",
        "| binary | 12 | 75.0 % | 50.0 % | — | 100.0 % | 50.0 % |",
        "| 1 (8) | 12.5 / 25.0 % | 50.0 / 62.5 % |",
    ]
    lines = text.splitlines()
    for line in expected:
        assert line in lines, line
    assert "object regions only" not in text  # only the rows metrics/ holds


def test_a_changed_figure_shows_and_makes_the_readme_stale(repo_root, tmp_path, capsys):
    metrics = tmp_path / "metrics"
    shutil.copytree(repo_root / "metrics", metrics)
    readme = tmp_path / "README.md"
    shutil.copy(repo_root / "README.md", readme)
    before = readme.read_text()
    figures = json.loads((metrics / "classifier.json").read_text())
    figures["test_accuracy"] = 0.123
    (metrics / "classifier.json").write_text(json.dumps(figures))

    method = next(line for line in render(metrics).splitlines() if "the method, L_multi" in line)
    assert method.split(" | ")[1] == "12.3 %"
    assert update(readme, metrics, check=True) is False
    assert readme.read_text() == before  # a check writes nothing
    assert main(["readme-results", "--check", "--readme", str(readme), "--metrics", str(metrics)]) == 1
    assert capsys.readouterr().err.strip() == f"{readme}'s results are stale; run `image-emotion readme-results`"

    assert main(["readme-results", "--readme", str(readme), "--metrics", str(metrics)]) == 0
    after = readme.read_text()
    assert "| 12.3 % |" in after and after.count(BEGIN) == after.count(END) == 1
    assert after.split(BEGIN)[0] == before.split(BEGIN)[0] and after.split(END)[1] == before.split(END)[1]
    assert update(readme, metrics, check=True) is True


def test_a_missing_key_is_a_one_line_error_naming_the_file_and_key(tmp_path):
    metrics = _tiny_metrics(tmp_path)
    figures = json.loads((metrics / "classifier.json").read_text())
    del figures["claims"]["multi_over_cls"]["low"]
    (metrics / "classifier.json").write_text(json.dumps(figures))
    with pytest.raises(MetricsError) as caught:
        render(metrics)
    assert str(caught.value) == f"{metrics / 'classifier.json'}: no key 'claims.multi_over_cls.low'"


def test_a_missing_file_is_a_one_line_error_naming_it(tmp_path, capsys):
    metrics = _tiny_metrics(tmp_path / "metrics")
    (metrics / "detector.json").unlink()
    with pytest.raises(MetricsError) as caught:
        render(metrics)
    assert str(caught.value) == f"{metrics / 'detector.json'}: missing; run `dvc repro` to write it"
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{BEGIN}\n{END}\n")
    assert main(["readme-results", "--readme", str(readme), "--metrics", str(metrics)]) == 2
    assert capsys.readouterr().err == f"error: {metrics / 'detector.json'}: missing; run `dvc repro` to write it\n"
    assert readme.read_text() == f"# x\n{BEGIN}\n{END}\n"


def test_a_readme_without_the_markers_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no block\n")
    with pytest.raises(MetricsError, match="results:begin"):
        update(readme, _tiny_metrics(tmp_path / "metrics"), check=True)
