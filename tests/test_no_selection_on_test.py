"""Nothing is chosen on the test set: training, λ* and promotion read validation; test labels are only reported.

The oracle is the stage itself run twice on the tiny run's features: once on its prepared set and once on a copy
whose *test* rows all carry another class (label and distribution moved one class along). Whatever a stage chooses
or learns before its final evaluation must come out bit-identical; only the test figures may move. A stage that
peeked at test labels (early stopping on test, λ* by test accuracy, a test row in a training batch) fails here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from image_emotion.data.emotions import get_label_set
from image_emotion.data.manifest import read_manifest, write_manifest
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.models.multilevel import load_head
from image_emotion.stages import evaluate, train_classifier
from image_emotion.training.heads import load_head_data, predict, split_index

pytestmark = pytest.mark.e2e


def _relabel_test_rows(prepared: Path, out: Path, new_labels: list[int]) -> None:
    """A copy of ``prepared`` whose test rows, in order, name the classes ``new_labels`` (label and vote
    distribution moved by the same number of classes)."""
    shutil.copytree(prepared, out)
    info = json.loads((prepared / "dataset.json").read_text())
    root = Path(info["root"])
    info["root"] = str((root if root.is_absolute() else prepared / root).resolve())  # the copy sits elsewhere
    (out / "dataset.json").write_text(json.dumps(info))
    manifest = read_manifest(out / "manifest.csv")
    names = list(get_label_set(manifest["label_set"].iloc[0]).labels)
    rows = manifest.index[manifest["split"] == "test"]
    assert len(rows) == len(new_labels)
    for row, new in zip(rows, new_labels, strict=True):
        shift = (new - names.index(manifest.at[row, "label"])) % len(names)
        manifest.at[row, "label"] = names[new]
        if manifest.at[row, "distribution"] is not None:
            manifest.at[row, "distribution"] = np.roll(manifest.at[row, "distribution"], shift).tolist()
    write_manifest(manifest, out / "manifest.csv")


def _train(config, prepared: Path, features: Path, out: Path) -> dict:
    """train_classifier into ``out``, with an MLflow store of its own (each run is another pipeline run)."""
    out.mkdir(parents=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{out / 'mlflow.db'}"  # the test's mlflow_uri restores it
    paths = train_classifier.ClassifierPaths(
        prepared, features, out / "classifier", out / "sweep.json", out / "ablation.json", out / "classifier.json"
    )
    train_classifier.run(config, paths)
    return json.loads((out / "sweep.json").read_text())


def _test_predictions(config, work: Path, head_path: Path) -> list[int]:
    head, _ = load_head(head_path)
    data, head_data, _ = load_head_data(work / "prepared/main", work / "features/main", config.emotions)
    return predict(head, head_data.select(split_index(data, "test")), device="cpu").argmax(1).tolist()


def test_training_and_lambda_selection_never_read_test_labels(tiny_run, tmp_path, mlflow_uri):
    """The test rows are relabelled so that the λ validation chose scores 0 on test while another λ scores more
    (that λ's own predictions where the two differ): a stage choosing on test would now choose the other λ."""
    work, config = tiny_run
    original = _train(config, work / "prepared/main", work / "features/main", tmp_path / "original")
    chosen_lambda = load_head(tmp_path / "original/classifier/head.pt")[1]["lambda"]
    other_lambda = next(x for x in config.classifier.lambdas if x != chosen_lambda)
    alone = config.with_values({"classifier.lambdas": [other_lambda]})  # the stage trains that λ's head alone
    _train(alone, work / "prepared/main", work / "features/main", tmp_path / "other")
    chosen = _test_predictions(config, work, tmp_path / "original/classifier/head.pt")
    other = _test_predictions(config, work, tmp_path / "other/classifier/head.pt")
    classes = len(get_label_set(PreparedDataset.load(work / "prepared/main").label_set))
    new_labels = [o if o != c else (c + 1) % classes for c, o in zip(chosen, other, strict=True)]
    _relabel_test_rows(work / "prepared/main", tmp_path / "prepared", new_labels)
    relabelled = _train(config, tmp_path / "prepared", work / "features/main", tmp_path / "relabelled")
    test_accuracy = {row["lambda"]: row["test_accuracy"] for row in relabelled}
    assert test_accuracy[chosen_lambda] == 0.0 and test_accuracy[other_lambda] > 0.0  # test would choose another

    def selection(sweep: list[dict]) -> list[tuple]:
        return [(row["lambda"], row["val_accuracy"], row["val_nll"]) for row in sweep]

    assert selection(original) == selection(relabelled)  # λ* is chosen from these
    for name in ("head.pt", "head_binary.pt"):
        a = torch.load(tmp_path / "original/classifier" / name, weights_only=False)
        b = torch.load(tmp_path / "relabelled/classifier" / name, weights_only=False)
        assert a.get("lambda") == b.get("lambda")
        for key, value in a["state_dict"].items():
            assert torch.equal(value, b["state_dict"][key]), f"{name}: {key} depends on test labels"

    # evaluate: what promotion compares (validation) does not move, the reported test figure does
    figures = {}
    for run, prepared in (("original", work / "prepared/main"), ("relabelled", tmp_path / "prepared")):
        cls = tmp_path / run / "classifier"
        paths = evaluate.EvaluatePaths(
            prepared, work / "features/main", cls / "head.pt", cls / "head_binary.pt", tmp_path / run / "sweep.json",
            tmp_path / run / "ablation.json", work / "metrics/transfer", tmp_path / run / "evaluate.json",
            tmp_path / run / "plots",
        )  # fmt: skip
        figures[run] = evaluate.run(config, paths)
    assert figures["original"]["val_accuracy"] == figures["relabelled"]["val_accuracy"]
    assert figures["relabelled"]["test_accuracy"] == 0.0  # the relabelled test rows are what it reports
