"""The pipeline's stages on the tiny config: every output is written and consistent with the others, the MLflow run
tree, the feature cache (reused; a corrupt shard recomputed, never read), registry promotion and the served model.
The tiny run is shared and read-only: a test that changes files works on a copy."""

import base64
import json
import shutil

import mlflow
import pandas as pd
import pytest
import torch

from image_emotion.data.emotions import MIKELS8
from image_emotion.stages import extract_regions, register
from image_emotion.tracking.pyfunc import encode_image_file
from image_emotion.tracking.registry import decide
from image_emotion.training.feature_cache import CacheError
from image_emotion.training.feature_store import load_cache


def test_stage_outputs_are_complete_and_sane(tiny_run):
    work, _ = tiny_run
    sweep = json.loads((work / "metrics/sweep.json").read_text())
    assert [r["lambda"] for r in sweep] == [0.0, 0.5, 1.0]
    ablation = json.loads((work / "metrics/ablation.json").read_text())
    assert [r["mode"] for r in ablation] == ["global", "object", "emotional", "global+object", "global+emotional"]
    transfer = json.loads((work / "metrics/transfer/small.json").read_text())
    assert transfer["folds"] == 5 and len(transfer["accuracy_per_fold"]) == 5
    evaluation = json.loads((work / "metrics/evaluate.json").read_text())
    assert set(evaluation["table1"]) == {r["mode"] for r in ablation}
    method = next(r for r in ablation if r["mode"] == "global+emotional")
    assert evaluation["table1"]["global+emotional"] == method["test_accuracy"]
    for name in (
        "confusion.csv",
        "lambda_curve.csv",
        "ablation.csv",
        "lambda_curve.png",
        "confusion.png",
        "regions.png",
    ):
        assert (work / "plots" / name).stat().st_size > 0
    assert (work / "plots/regions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    confusion = pd.read_csv(work / "plots/confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"]
    manifest = pd.read_csv(work / "prepared/main/manifest.csv")
    assert len(confusion) == evaluation["num_test_images"] == (manifest["split"] == "test").sum()
    # the reported accuracy is the share of the confusion table's diagonal, and the λ* row of the sweep
    assert evaluation["test_accuracy"] == pytest.approx((confusion["actual"] == confusion["predicted"]).mean())
    best = next(r for r in sweep if r["lambda"] == evaluation["lambda"])
    assert evaluation["test_accuracy"] == pytest.approx(best["test_accuracy"])


def test_mlflow_has_one_parent_with_nested_stage_and_lambda_runs(tiny_run, tiny_store):
    mlflow.set_tracking_uri(tiny_store)  # the tiny run's own store: its runs and no other test's
    runs = mlflow.search_runs(experiment_names=["image-emotion"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
    assert len(parents) == 1
    parent = parents[0]
    assert "params.resolved.json" in [a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)]
    stages = {r.data.tags.get("stage"): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(stages) == {
        "evaluate", "extract_regions", "finetune_detector", "pretrain_objects", "train_classifier", "transfer_cv@small"
    }  # fmt: skip
    train_id = stages["train_classifier"].info.run_id
    lambda_runs = [r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == train_id]
    assert {"lambda=0.0", "lambda=0.5", "lambda=1.0", "loss=p", "mode=global", "binary"} <= set(lambda_runs)
    transfer_id = stages["transfer_cv@small"].info.run_id
    folds = sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == transfer_id)
    assert folds == [f"fold={k}" for k in range(5)]  # the same tree as a kfp run's (tests/test_kubeflow.py)
    assert "loss" in stages["finetune_detector"].data.metrics and "loss" in stages["pretrain_objects"].data.metrics


def test_feature_cache_is_reused_and_corruption_is_recomputed_never_used(tiny_run, capsys, tmp_path, mlflow_uri):
    work, params = tiny_run
    cache = tmp_path / "main"  # the result is keyed by the cache directory's name
    shutil.copytree(work / "features/main", cache)
    paths = extract_regions.ExtractPaths(
        work / "models/detector.pt",
        work / "models/objects.pt",
        (work / "prepared/main",),
        (cache,),
        tmp_path / "x.json",
    )
    again = extract_regions.run(params, paths)["datasets"]["main"]
    assert again["shards_computed"] == 0 and again["shards_reused"] == 3
    before = load_cache(cache)
    shard = cache / "shard-00001.emotional.npy"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="shard 00001 is missing or corrupt"):
        load_cache(cache)
    capsys.readouterr()
    fixed = extract_regions.run(params, paths)["datasets"]["main"]
    assert "corrupt or missing cache entry" in capsys.readouterr().err
    assert fixed["shards_computed"] == 1 and fixed["shards_reused"] == 2
    after = load_cache(cache)
    torch.testing.assert_close(after["global"], before["global"], atol=2e-3, rtol=0)


def test_promotion_decision_rules():
    cand = {"accuracy": 0.8, "dataset": "synthetic", "label_set": "mikels8"}
    assert decide(cand, None, 0.0) == (True, "no champion yet")
    assert decide(cand, None, 0.9)[0] is False
    assert decide(cand, {**cand, "accuracy": 0.7}, 0.0)[0] is True
    assert decide(cand, {**cand, "accuracy": 0.8}, 0.0)[0] is False  # a tie does not replace the champion
    assert decide(cand, {**cand, "accuracy": 0.9}, 0.0)[0] is False
    assert "not comparable" in decide(cand, {"accuracy": 0.1, "dataset": "fi", "label_set": "mikels8"}, 0.0)[1]


def test_registry_promotes_only_a_better_model_and_serves_the_champion(tiny_run, mlflow_uri, tmp_path):
    work, params = tiny_run
    params = params.with_overrides(["register.model_name=tiny-emotion", "register.min_accuracy=0.0"])
    evaluation = json.loads((work / "metrics/evaluate.json").read_text())

    def register_with(accuracy: float, test_accuracy: float = 0.5) -> dict:
        path = tmp_path / f"evaluate_{accuracy}_{test_accuracy}.json"
        path.write_text(json.dumps({**evaluation, "val_accuracy": accuracy, "test_accuracy": test_accuracy}))
        return register.run(
            params,
            register.RegisterPaths(
                work / "prepared/main",
                work / "models/detector.pt",
                work / "models/classifier/head.pt",
                path,
                tmp_path / "register.json",
            ),
        )

    first = register_with(0.60)
    assert first["promoted"] and first["version"] == 1
    worse = register_with(0.50)
    assert not worse["promoted"] and worse["champion_accuracy_before"] == 0.60
    client = mlflow.MlflowClient(mlflow_uri)
    assert str(client.get_model_version_by_alias("tiny-emotion", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("tiny-emotion", "challenger").version) == "2"
    better = register_with(0.75)
    assert better["promoted"] and "validation accuracy 0.7500 beats the champion's 0.6000" in better["reason"]
    best_on_test = register_with(0.70, test_accuracy=0.99)  # test is recorded, never compared
    assert not best_on_test["promoted"] and best_on_test["reported"] == {"test_accuracy": 0.99}
    version = client.get_model_version("tiny-emotion", str(best_on_test["version"]))
    assert version.tags["val_accuracy"] == "0.7" and version.tags["test_accuracy"] == "0.99"
    assert str(client.get_model_version_by_alias("tiny-emotion", "champion").version) == str(better["version"])
    assert str(client.get_model_version_by_alias("tiny-emotion", "champion").version) == "3"

    model = mlflow.pyfunc.load_model("models:/tiny-emotion@champion")
    image = next((work / "synthetic/main/images").iterdir())
    out = model.predict(pd.DataFrame({"image": [encode_image_file(image), encode_image_file(image)]}))
    assert list(out.columns[:2]) == ["label", "polarity"] and len(out) == 2
    assert out["polarity"][0] == MIKELS8.polarity(out["label"][0])
    probs = out.drop(columns=["label", "polarity", "regions"]).to_numpy()
    assert probs.shape == (2, 8) and abs(probs.sum(axis=1) - 1).max() < 1e-4
    assert len(json.loads(out["regions"][0])) == 4
    with pytest.raises(Exception, match="not an image"):
        model.predict(pd.DataFrame({"image": [base64.b64encode(b"plain text").decode()]}))


def test_stage_reports_missing_inputs_clearly(tiny_run, tmp_path):
    work, params = tiny_run
    shutil.copytree(work / "prepared/main", tmp_path / "prepared")
    from image_emotion.stages import train_classifier

    paths = train_classifier.ClassifierPaths(
        tmp_path / "prepared",
        tmp_path / "nofeatures",
        tmp_path / "m",
        tmp_path / "a.json",
        tmp_path / "b.json",
        tmp_path / "c.json",
    )
    with pytest.raises(CacheError, match="run `image-emotion extract-regions` first"):
        train_classifier.run(params, paths)
