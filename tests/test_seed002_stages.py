"""Seed 002's stages on the tiny run: ``train_metric`` (the model and Table 1's rows), ``retrieve`` (index,
measures, figures) and ``register_metric`` (champion only when the test mAP8 is better). The seed-002 outputs of
the session fixture are read-only; a test that changes a file works on a copy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from image_emotion.data.torch_data import PreparedDataset
from image_emotion.errors import ConfigError
from image_emotion.metrics import retrieval_report
from image_emotion.models.metric import load_metric_model
from image_emotion.retrieval import EmbeddingIndex
from image_emotion.stages import retrieve, retrieve_transfer, train_metric
from image_emotion.stages.paths import RetrievePaths, RetrieveTransferPaths, TrainMetricPaths

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def seed002_run(tiny_run, tmp_path_factory, mlflow_store):
    """``train_metric`` then ``retrieve`` on the tiny run's prepared sets, into a directory of their own."""
    work, config = tiny_run
    out = tmp_path_factory.mktemp("seed002")
    env = pytest.MonkeyPatch()
    env.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    train = TrainMetricPaths(work / "prepared/main", out / "models/metric", out / "metric.json", out / "ablation.json")
    summary = train_metric.run(config, train)
    paths = RetrievePaths(
        work / "prepared/main", out / "models/metric/model.pt", out / "ablation.json", out / "models/retrieval",
        out / "retrieval.json", out / "plots_retrieval",
    )  # fmt: skip
    retrieve.run(config, paths)
    small = RetrieveTransferPaths("small", work / "prepared/small", paths.model, out / "retrieval_transfer/small.json")
    retrieve_transfer.run(config, small)
    env.undo()
    return work, out, config, summary, paths


def test_train_metric_writes_the_model_and_every_table1_row(seed002_run):
    work, out, _, summary, _ = seed002_run
    model, state = load_metric_model(out / "models/metric/model.pt")
    assert (state["label_set"], state["image_size"], state["retrieval_feature"]) == ("mikels8", 48, "sentiment")
    assert model.classifier.out_features == 8 and model.embedding_dim == 16
    rows = json.loads((out / "ablation.json").read_text())
    assert [r["row"] for r in rows] == [  # the paper's Table 1, top to bottom
        "softmax", "centre", "triplet_random", "softmax_triplet_random", "softmax_triplet_hard",
        "softmax_triplet_semihard", "sentiment_fc", "sentiment_sv",
    ]  # fmt: skip
    assert {r["feature"] for r in rows if r["row"] != "sentiment_sv"} == {"FC"} and rows[-1]["feature"] == "SV"
    assert all(r["accuracy_std"] is None and r["seeds"] == [0] for r in rows)  # one seed: no spread
    data = PreparedDataset.load(work / "prepared/main")
    assert summary["train_images"] == len(data.split_rows("train"))
    assert summary["last_epoch_loss"] < summary["first_epoch_loss"]  # training lowered the joint loss


def test_train_metric_and_retrieve_repeat_exactly_from_scratch(seed002_run, tmp_path, mlflow_uri):
    work, out, config, _, _ = seed002_run
    train = TrainMetricPaths(
        work / "prepared/main", tmp_path / "metric", tmp_path / "metric.json", tmp_path / "abl.json"
    )
    train_metric.run(config, train)
    paths = RetrievePaths(
        work / "prepared/main", tmp_path / "metric/model.pt", tmp_path / "abl.json", tmp_path / "retrieval",
        tmp_path / "retrieval.json", tmp_path / "plots",
    )  # fmt: skip
    retrieve.run(config, paths)
    for mine, first in (("metric.json", "metric.json"), ("abl.json", "ablation.json"), ("retrieval.json", None)):
        a = json.loads((tmp_path / mine).read_text())
        b = json.loads((out / (first or mine)).read_text())
        for d in (a, b):
            if isinstance(d, dict):  # wall-clock time is the one thing allowed to differ
                d.pop("seconds", None)
        assert a == b, mine


def test_retrieve_measures_agree_with_the_saved_index_and_a_direct_computation(seed002_run):
    work, _, _, summary, paths = seed002_run
    result = json.loads(paths.metrics.read_text())
    data = PreparedDataset.load(work / "prepared/main")
    index = EmbeddingIndex.load(paths.index)
    assert index.kind == "exact" and len(index) == len(data.manifest) == result["collection_size"]
    assert index.ids[0].endswith(data.manifest["path"].iloc[0]) and result["dimension"] == 680
    # the paper's FI protocol recomputed from the saved embeddings: test queries against the train split
    train, test = data.split_rows("train"), data.split_rows("test")
    labels = np.asarray(index.labels)
    direct = retrieval_report(index.embeddings[test], labels[test], index.embeddings[train], labels[train], "mikels8")
    for key in ("nn", "ft", "st", "map8", "map2", "dcg", "anmrr"):
        assert result["main"][key] == pytest.approx(direct[key], abs=1e-6)
    # train_metric scored the same model the same way before saving it
    assert result["main"]["map8"] == pytest.approx(summary["test_map8"], abs=1e-5)
    # an indexed image finds itself first
    distances, positions = index.search(index.embeddings[5], 3)
    assert positions[0, 0] == 5 and distances[0, 0] == pytest.approx(0.0, abs=1e-5)
    assert len(result["ablation"]) == 8


def test_retrieve_transfer_fine_tunes_on_each_80_percent_and_keeps_leave_one_out_as_an_extra(seed002_run):
    work, out, _, _, paths = seed002_run
    small = json.loads((out / "retrieval_transfer/small.json").read_text())
    assert (small["set"], small["protocol"]) == ("small", retrieve_transfer.PROTOCOL)
    folds = small["folds"]
    data = PreparedDataset.load(work / "prepared/small")
    fold_of = data.manifest["fold"].to_numpy()
    assert [f["fold"] for f in folds] == [0, 1, 2, 3, 4]
    for f in folds:  # each fold's queries are its own images, its gallery the other 80 %
        assert f["test_images"] == f["num_queries"] == int((fold_of == f["fold"]).sum())
        assert f["train_images"] == 40 - f["test_images"]
    accuracies = [f["accuracy"] for f in folds]
    assert small["accuracy"] == pytest.approx(sum(accuracies) / 5)
    assert small["map8_std"] == pytest.approx(float(np.std([f["map8"] for f in folds], ddof=1)))
    # the extra: leave-one-out with the FI model, recomputed from it, every image a query against the 39 others
    from image_emotion.training.metric import embed, image_tensor

    model, state = load_metric_model(paths.model)
    x = embed(model, image_tensor(data, state["image_size"], state["image_mean"], state["image_std"]))["sentiment"]
    y = data.labels().numpy()
    direct = retrieval_report(x, y, x, y, "mikels8", exclude_self=True)
    loo = small["leave_one_out"]
    assert loo["num_queries"] == 40
    assert loo["map8"] == pytest.approx(direct["map8"], abs=1e-6) and loo["nn"] == pytest.approx(direct["nn"])
    with_self = retrieval_report(x, y, x, y, "mikels8")  # the query itself at rank 1 would inflate NN to 1
    assert with_self["nn"] == 1.0 and loo["nn"] < 1.0


def test_each_folds_measures_are_its_queries_against_the_other_folds(seed002_run, mlflow_uri, tmp_path):
    """With a learning rate too small to move anything, a fold's figures are the FI model's own, computed here
    independently: fold k's images as queries, the other folds as the gallery."""
    work, _, config, _, paths = seed002_run
    model, state = load_metric_model(paths.model)
    data = PreparedDataset.load(work / "prepared/small")
    still = config.metric.model_copy(update={"lr_conv": 1e-12, "lr_last": 1e-12, "epochs": 1})
    rows = retrieve_transfer.fine_tuned_folds(model, state, data, still, tmp_path)
    from image_emotion.training.metric import embed, image_tensor

    out = embed(model, image_tensor(data, state["image_size"], state["image_mean"], state["image_std"]))
    y, fold_of = data.labels().numpy(), data.manifest["fold"].to_numpy()
    for row in rows:
        q, g = fold_of == row["fold"], fold_of != row["fold"]
        want = retrieval_report(out["sentiment"][q], y[q], out["sentiment"][g], y[g], "mikels8")
        assert row["map8"] == pytest.approx(want["map8"], abs=1e-4) and row["nn"] == pytest.approx(want["nn"])
        assert row["accuracy"] == pytest.approx(float((out["logits"][q].argmax(1) == y[q]).mean()))


def test_a_set_with_other_classes_gets_a_new_classifier_and_keeps_the_rest(seed002_run):
    _, _, _, _, paths = seed002_run
    model, _ = load_metric_model(paths.model)
    tuned = retrieve_transfer.for_classes(model, 6, seed=0)
    assert tuned.classifier.out_features == 6 and model.classifier.out_features == 8
    assert all(torch.equal(a, b) for a, b in zip(tuned.reducers.parameters(), model.reducers.parameters(), strict=True))
    same = retrieve_transfer.for_classes(model, 8, seed=0)
    assert torch.equal(same.classifier.weight, model.classifier.weight) and same is not model


def test_retrieve_draws_the_tsne_and_the_query_grid(seed002_run):
    _, _, config, _, paths = seed002_run
    assert (paths.plots / "tsne.png").read_bytes()[:8] == PNG
    tsne = (paths.plots / "tsne.csv").read_text().splitlines()
    assert tsne[0] == "x,y,label" and len(tsne) - 1 == len(PreparedDataset.load(paths.prepared).split_rows("test"))
    from PIL import Image

    grid = Image.open(paths.plots / "queries.png")
    assert grid.size == ((config.retrieve.k + 1) * 136, config.retrieve.grid_queries * 152)


def test_retrieve_without_a_model_says_what_to_run(seed002_run, tmp_path):
    _, _, config, _, paths = seed002_run
    missing = RetrievePaths(
        paths.prepared, tmp_path / "none.pt", (), paths.ablation, tmp_path / "i", tmp_path / "r.json"
    )
    with pytest.raises(ConfigError, match="train the sentiment-vector model first"):
        retrieve.run(config, missing)


def test_grid_queries_take_one_test_image_of_each_class_first():
    labels = np.array([0, 1, 0, 2, 1, 2, 0])
    assert retrieve.grid_queries(labels, np.array([1, 2, 4, 5, 6]), 4) == [2, 1, 5, 4]
    assert retrieve.grid_queries(labels, np.array([2, 6]), 5) == [2, 6]


def test_register_metric_promotes_only_a_better_map8_and_serves_the_champion(seed002_run, tmp_path, monkeypatch):
    import mlflow
    import pandas as pd

    from image_emotion.stages import register_metric
    from image_emotion.stages.paths import RegisterMetricPaths
    from image_emotion.tracking.pyfunc import encode_image_file

    _, _, config, _, paths = seed002_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # a registry of its own
    first = register_metric.run(
        config,
        RegisterMetricPaths(paths.prepared, paths.model, paths.index, paths.metrics, tmp_path / "first.json"),
    )
    assert (first["version"], first["promoted"], first["reason"]) == (1, True, "no champion yet")
    worse = json.loads(paths.metrics.read_text())
    worse["validation"]["map8"] -= 0.05  # worse on validation, better on test: test is never compared
    worse["main"]["map8"] += 0.05
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    second = register_metric.run(
        config,
        RegisterMetricPaths(
            paths.prepared, paths.model, paths.index, tmp_path / "worse.json", tmp_path / "second.json"
        ),
    )
    assert (second["version"], second["promoted"]) == (2, False) and "does not beat" in second["reason"]
    client = mlflow.MlflowClient()
    name = config.register.retrieval_model_name
    assert int(client.get_model_version_by_alias(name, "champion").version) == 1
    assert int(client.get_model_version_by_alias(name, "challenger").version) == 2
    # the champion answers a DataFrame of images with neighbours from the index (the first: the image itself)
    data = PreparedDataset.load(paths.prepared)
    image = data.root / data.manifest["path"].iloc[0]
    answer = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(
        pd.DataFrame({"image": [encode_image_file(image)]}), params={"k": 2}
    )
    neighbours = json.loads(answer["neighbours"].iloc[0])
    assert len(neighbours) == 2 and neighbours[0]["id"] == str(image) and neighbours[0]["distance"] < 1e-4


@pytest.mark.parametrize(
    ("query", "hit", "label_set", "expected"),
    [
        ("awe", "awe", "mikels8", "same"),
        ("awe", "amusement", "mikels8", "polarity"),  # both positive
        ("awe", "fear", "mikels8", "other"),
        ("anger", "sadness", None, "polarity"),  # the label set found from the labels
        ("joy", "anger", "ekman6", "other"),
        ("neutral", "neutral", "emotion6", "same"),
        ("joy", "neutral", "emotion6", "other"),  # neutral has no polarity
    ],
)
def test_relevance_of_a_retrieved_label_to_the_query(query, hit, label_set, expected):
    from image_emotion.figures import relevance

    assert relevance(query, hit, label_set) == expected
