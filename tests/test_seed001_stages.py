"""Seed 001's stages on the tiny run: ``train_generative`` (one model for the main set's Mikels-8, its binary
view and a synthetic Ekman-6 set; probes; low-resource curve), ``evaluate_generative`` and
``register_generative``. The outputs of the module fixture are read-only; a test that changes a file works on a
copy."""

from __future__ import annotations

import csv
import json
import shutil

import pandas as pd
import pytest

from image_emotion.data.emotions import get_label_set
from image_emotion.data.images import load_image
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.errors import ConfigError
from image_emotion.files import load_checkpoint
from image_emotion.models.generative import load_generative_model
from image_emotion.models.templates import get_template
from image_emotion.stages import evaluate_generative, prepare, train_generative
from image_emotion.stages.paths import EvaluateGenerativePaths, PreparePaths, TrainGenerativePaths
from image_emotion.tracking.generative_pyfunc import GenerativePredictor

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def seed001_run(tiny_run, tmp_path_factory, mlflow_store):
    """The synthetic Ekman-6 set prepared, then ``train_generative`` and ``evaluate_generative`` on the tiny run."""
    work, config = tiny_run
    out = tmp_path_factory.mktemp("seed001")
    env = pytest.MonkeyPatch()
    env.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    ekman = config.with_overrides([f"data.root={work / 'synthetic' / 'ekman'}"])
    prepare.run(ekman, PreparePaths(out / "prepared/generative/ekman", out / "prepare_ekman.json"))
    train = TrainGenerativePaths(
        work / "prepared/main", out / "prepared/generative", out / "ckpt/last.pt", out / "models/generative",
        out / "generative_train.json", out / "generative_low_resource.json",
    )  # fmt: skip
    summary = train_generative.run(config, train)
    paths = EvaluateGenerativePaths(
        train.prepared, train.sets, train.out_dir, train.metrics, train.low_resource, out / "generative.json",
        out / "plots_generative",
    )  # fmt: skip
    evaluation = evaluate_generative.run(config, paths)
    env.undo()
    return config, summary, evaluation, train, paths


def _train_counts(data: PreparedDataset) -> pd.Series:
    return data.manifest.loc[data.manifest["split"] == "train", "label"].value_counts()


def test_one_model_is_trained_on_every_emotion_model_of_the_mixed_sets(seed001_run):
    config, summary, _, train, _ = seed001_run
    main = PreparedDataset.load(train.prepared)
    ekman = PreparedDataset.load(train.sets / "ekman")
    assert ekman.label_set == "ekman6" and summary["emotion_models"] == ["mikels8", "binary", "ekman6"]
    main_train, ekman_train = _train_counts(main).sum(), _train_counts(ekman).sum()
    assert summary["train_examples"] == {  # every image of both sets also counts as positive / negative
        "mikels8": main_train, "binary": main_train + ekman_train, "ekman6": ekman_train
    }  # fmt: skip
    model, state = load_generative_model(train.out_dir)
    assert state["emotion_models"] == summary["emotion_models"] and state["primary"] == "mikels8"
    assert model.bart.config.d_model == 16 and model.image_size == 48
    checkpoint = load_checkpoint(train.checkpoint)
    assert checkpoint["fingerprint"] == state["fingerprint"] and len(checkpoint["losses"]) == config.generative.epochs
    assert summary["last_epoch_loss"] == checkpoint["losses"][-1]


def test_low_resource_rows_train_on_k_images_a_class_of_each_set(seed001_run):
    config, _, _, train, _ = seed001_run
    rows = json.loads(train.low_resource.read_text())
    main, ekman = PreparedDataset.load(train.prepared), PreparedDataset.load(train.sets / "ekman")
    assert [(r["shots"], r["emotion_model"]) for r in rows] == [
        (k, m) for k in config.generative.low_resource_shots for m in ("mikels8", "binary", "ekman6")
    ]
    for row in rows:
        expected = sum(min(row["shots"], n) for data in (main, ekman) for n in _train_counts(data))
        assert row["train_images"] == expected and row["seeds"] == [0] and row["generative_std"] is None
        assert row["probe"] is not None


def test_evaluation_agrees_with_the_served_predictor_on_the_image_files(seed001_run):
    _, _, evaluation, train, _ = seed001_run
    predictor = GenerativePredictor(train.out_dir, device="cpu")
    for name, data in (("main", PreparedDataset.load(train.prepared)), ("ekman", None)):
        data = data or PreparedDataset.load(train.sets / name)
        test = data.split("test")
        images = [load_image(test.root / p) for p in test.manifest["path"]]
        answer = predictor.predict_images(images)
        own = answer[answer["emotion_model"] == data.label_set]
        truth = list(test.manifest["label"])
        scores = evaluation["emotion_models"][data.label_set]
        assert scores["num_samples"] == len(truth)
        assert scores["accuracy"] == pytest.approx(
            sum(a == t for a, t in zip(own["label"], truth, strict=True)) / len(truth)
        )
        labels = get_label_set(data.label_set)
        polar = answer[answer["emotion_model"] == "binary"]
        assert list(polar["label"]) != [] and set(polar["label"]) <= {"negative", "positive"}
        for _, row in own.iterrows():  # the label is the distribution's argmax, the text its template
            distribution = json.loads(row["distribution"])
            assert list(distribution) == list(labels.labels) and sum(distribution.values()) == pytest.approx(
                1, abs=1e-4
            )
            assert row["label"] == max(distribution, key=distribution.get)
            assert row["text"] == get_template(data.label_set).text(row["label"])
            assert row["polarity"] == (labels.polarity_or_none(row["label"]) or "")
    binary = evaluation["emotion_models"]["binary"]
    assert binary["num_samples"] == sum(
        evaluation["emotion_models"][m]["num_samples"] for m in ("mikels8", "ekman6")
    )  # every test image of both sets has a polarity
    assert evaluation["decoding"]["valid"] == 1.0  # the constrained decoder only writes templates
    assert evaluation["accuracy"] == evaluation["emotion_models"]["mikels8"]["accuracy"]


def test_evaluate_writes_the_low_resource_curve_and_one_confusion_file_per_emotion_model(seed001_run):
    config, _, evaluation, _, paths = seed001_run
    with (paths.plots / "low_resource.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(config.generative.low_resource_shots) * 3
    assert [float(r["generative"]) for r in rows] == [r["generative"] for r in evaluation["low_resource"]]
    assert (paths.plots / "low_resource.png").read_bytes()[:8] == PNG
    for name, scores in evaluation["emotion_models"].items():
        confusion = pd.read_csv(paths.plots / f"confusion_{name}.csv")
        assert len(confusion) == scores["num_samples"]
        assert (confusion["actual"] == confusion["predicted"]).mean() == pytest.approx(scores["accuracy"])


def test_training_again_from_scratch_gives_identical_results(seed001_run, tmp_path, mlflow_uri):
    config, summary, _, train, _ = seed001_run
    again = TrainGenerativePaths(
        train.prepared, train.sets, tmp_path / "ckpt/last.pt", tmp_path / "model", tmp_path / "train.json",
        tmp_path / "low.json",
    )  # fmt: skip
    assert train_generative.run(config, again) == summary  # the model, its probes and every number
    assert json.loads(again.low_resource.read_text()) == json.loads(train.low_resource.read_text())


def test_evaluate_without_a_model_says_what_to_run(seed001_run, tmp_path):
    config, _, _, _, paths = seed001_run
    missing = EvaluateGenerativePaths(
        paths.prepared, paths.sets, tmp_path / "none", paths.training, paths.low_resource, tmp_path / "g.json",
        tmp_path / "plots",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="train-generative"):
        evaluate_generative.run(config, missing)


def test_training_resumes_its_checkpoint_and_a_changed_setting_starts_afresh(seed001_run, tmp_path, mlflow_uri):
    config, summary, _, train, _ = seed001_run
    shutil.copytree(train.checkpoint.parent, tmp_path / "ckpt")
    paths = TrainGenerativePaths(
        train.prepared, train.sets, tmp_path / "ckpt/last.pt", tmp_path / "model", tmp_path / "t.json",
        tmp_path / "lr.json",
    )  # fmt: skip
    quick = config.with_overrides(["generative.low_resource_seeds=[]"])  # the curve is not what is resumed
    resumed = train_generative.run(quick, paths)
    assert (resumed["first_epoch_loss"], resumed["last_epoch_loss"]) == (
        summary["first_epoch_loss"], summary["last_epoch_loss"]
    )  # fmt: skip
    assert resumed["test_accuracy"] == summary["test_accuracy"]
    longer = train_generative.run(quick.with_overrides(["generative.epochs=4"]), paths)  # one more epoch
    assert longer["first_epoch_loss"] == summary["first_epoch_loss"]
    assert len(load_checkpoint(paths.checkpoint)["losses"]) == 4
    fresh = train_generative.run(quick.with_overrides(["generative.lr=0.002"]), paths)
    assert fresh["first_epoch_loss"] != summary["first_epoch_loss"]
    assert len(load_checkpoint(paths.checkpoint)["losses"]) == config.generative.epochs


def test_register_generative_promotes_only_a_better_model_and_serves_the_champion(seed001_run, tmp_path, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    from image_emotion.stages import register_generative
    from image_emotion.stages.paths import RegisterGenerativePaths
    from image_emotion.tracking.pyfunc import encode_image_file

    config, _, _, train, paths = seed001_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # a registry of its own
    first = register_generative.run(
        config, RegisterGenerativePaths(train.prepared, train.out_dir, paths.metrics, tmp_path / "first.json")
    )
    assert (first["version"], first["promoted"], first["reason"]) == (1, True, "no champion yet")
    worse = json.loads(paths.metrics.read_text())
    worse["val_accuracy"] -= 0.05  # worse on validation, better on test: test is never compared
    worse["accuracy"] += 0.05
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    second = register_generative.run(
        config, RegisterGenerativePaths(train.prepared, train.out_dir, tmp_path / "worse.json", tmp_path / "2.json")
    )
    assert (second["version"], second["promoted"]) == (2, False) and "does not beat" in second["reason"]
    name = config.register.generative_model_name
    client = mlflow.MlflowClient()
    assert int(client.get_model_version_by_alias(name, "champion").version) == 1
    assert int(client.get_model_version_by_alias(name, "challenger").version) == 2
    data = PreparedDataset.load(train.prepared).split("test")
    frame = pd.DataFrame({"image": [encode_image_file(data.root / p) for p in data.manifest["path"][:2]]})
    served = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    answer = served.predict(frame)
    assert (
        list(answer["emotion_model"]) == ["mikels8", "binary", "ekman6"] * 2
        and list(answer["image"]) == [0] * 3 + [1] * 3
    )
    local = GenerativePredictor(train.out_dir, device="cpu").predict(frame)
    pd.testing.assert_frame_equal(answer.reset_index(drop=True), local, check_exact=False, atol=1e-5)
    only = served.predict(frame, params={"emotion_models": "binary"})
    assert list(only["emotion_model"]) == ["binary", "binary"]
    with pytest.raises(MlflowException, match="emotion6") as error:
        served.predict(frame, params={"emotion_models": "emotion6"})
    assert error.value.error_code == "INVALID_PARAMETER_VALUE"  # what `mlflow models serve` answers with HTTP 400


def test_describe_prints_every_emotion_model_of_each_image_and_names_a_bad_file(seed001_run, tmp_path, capsys):
    from image_emotion.cli import main

    _, _, _, train, _ = seed001_run
    data = PreparedDataset.load(train.prepared).split("test")
    good = data.root / data.manifest["path"].iloc[0]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    status = main(["describe", str(good), str(bad), "--model", str(train.out_dir), "--json"])
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert captured.err.count("warning: this model was trained on the embedded synthetic images") == 1
    assert status == 1 and result[str(bad)]["error"].startswith("not an image PIL can decode")
    served = GenerativePredictor(train.out_dir, device="cpu").predict_images([load_image(good)])
    assert [r["emotion_model"] for r in result[str(good)]] == list(served["emotion_model"])
    assert [r["label"] for r in result[str(good)]] == list(served["label"])
    assert main(["describe", str(good), "--model", str(train.out_dir), "--emotion-models", "ekman6"]) == 0
    table = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip()]  # kfp.local may indent
    assert len(table) == 2 and table[1].split()[1:3] == ["ekman6", served["label"].iloc[2]]
