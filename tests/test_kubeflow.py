"""The kfp v2 pipeline: the checked-in YAML is a fresh compile with GPU requests; a real local run end to end."""

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from tiny import tiny_config

from image_emotion.kubeflow.pipeline import compile_pipeline, pipeline_arguments, run_local


def test_checked_in_yaml_equals_a_fresh_compile(tmp_path, repo_root):
    fresh = compile_pipeline(tmp_path / "pipeline.yaml").read_text()
    assert (repo_root / "pipelines/image_emotion.yaml").read_text() == fresh, (
        "pipelines/image_emotion.yaml is stale: run `image-emotion compile-pipeline` and commit it"
    )


def test_compiled_pipeline_requests_gpus_retries_and_fans_out(repo_root):
    spec = yaml.safe_load((repo_root / "pipelines/image_emotion.yaml").read_text())
    executors = spec["deploymentSpec"]["executors"]
    gpu = {
        name: ex["container"]["resources"]
        for name, ex in executors.items()
        if "accelerator" in ex["container"].get("resources", {})
    }
    assert set(gpu) == {  # the extraction runs for the main data and, in the loop, for each transfer set
        "exec-pretrain-objects-op", "exec-finetune-detector-op", "exec-extract-regions-op", "exec-extract-regions-op-2",
        "exec-train-metric-op", "exec-train-generative-op",
    }  # fmt: skip
    for resources in gpu.values():
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["accelerator"]["resourceCount"] == "1"
        assert resources["resourceCpuRequest"] == "8" and resources["resourceMemoryRequest"] == "32G"
    images = {ex["container"]["image"] for ex in executors.values()}
    assert images == {"ghcr.io/image-emotion/image-emotion:0.1.0-cpu", "ghcr.io/image-emotion/image-emotion:0.1.0-cuda"}
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["finetune-detector-op"]["retryPolicy"]["maxRetryCount"] == 2
    loops = {name: t for name, t in tasks.items() if "parameterIterator" in t}
    assert len(loops) == 3  # the λ sweep, the transfer sets and the generative sets
    condition = next(t for t in tasks.values() if "triggerPolicy" in t)
    assert "min_accuracy" in condition["triggerPolicy"]["condition"]
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    expected = {
        "mlflow_tracking_uri", "mlflow_experiment", "params_yaml", "lambdas", "transfer_sets", "generative_sets",
        "min_accuracy",
    }  # fmt: skip
    assert expected <= set(inputs)


def test_pipeline_arguments_follow_params():
    args = pipeline_arguments(tiny_config())
    assert args["lambdas"] == [0.0, 0.5, 1.0] and args["transfer_sets"] == ["small"]
    assert args["generative_sets"] == ["generative:ekman"]  # prepare_op's role of each set of generative.sets
    assert yaml.safe_load(args["params_yaml"])["detector"]["min_size"] == 96


@pytest.mark.e2e
def test_local_run_of_the_whole_pipeline_registers_a_model(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    config = tiny_config(**{"register.model_name": "kfp-emotion"})
    run_dir = Path(run_local(config, tmp_path / "root", mlflow_tracking_uri=uri)["run_dir"])
    assert run_dir.parent == tmp_path / "root"
    page = Path(next(run_dir.glob("report-op/html"))).read_text()
    markdown = Path(next(run_dir.glob("report-op/markdown"))).read_text()
    evaluation = json.loads(Path(next(run_dir.glob("evaluate-op/metrics"))).read_text())
    # the report's Table 3 main row carries the evaluate step's test accuracy, next to FI's published 75.46
    main_row = next(line for line in markdown.splitlines() if line.startswith("| main (synthetic)"))
    assert main_row.split(" | ")[3:5] == [f"{100 * evaluation['test_accuracy']:.1f}", "75.46"]
    assert "Not the paper's data." in page and 'src="data:image/png;base64,' in page  # one self-contained file
    selected = json.loads(next(run_dir.glob("select-classifier-op/executor_output.json")).read_text())
    assert selected  # the λ selection step wrote its outputs
    client = mlflow.MlflowClient(uri)
    versions = client.search_model_versions("name='kfp-emotion'")
    assert len(versions) == 1  # the register step ran under the accuracy condition
    retrieval = client.get_model_version_by_alias(config.register.retrieval_model_name, "champion")
    assert int(retrieval.version) == 1 and float(retrieval.tags["test_map8"]) > 0  # seed 002's model, its own name
    # the report's seed-002 section reads the retrieve step's measures (the collected transfer set included)
    measures = json.loads(Path(next(run_dir.glob("retrieve-op/metrics"))).read_text())
    small = json.loads(Path(next(run_dir.glob("for-loop-2-*/retrieve-transfer-op/result"))).read_text())
    assert f"| mAP8 | {measures['main']['map8']:.4f} | {small['map8']:.4f} |" in markdown

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["image-emotion"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
    assert len(parents) == 1  # every component of the kfp run lands under one parent
    children: dict[str, list[str]] = {}
    for r in runs:
        children.setdefault(r.data.tags.get("mlflow.parentRunId"), []).append(r.info.run_name)
    parent_id = parents[0].info.run_id
    stage_runs = {r.info.run_name: r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id}
    # the same tree as under `dvc repro` (tests/test_pipeline_stages.py): one run per stage, λ and folds below
    assert sorted(stage_runs) == [
        "evaluate", "evaluate_generative", "extract_regions", "finetune_detector", "pretrain_objects", "register",
        "register_generative", "register_metric", "report", "retrieve", "retrieve@small", "train_classifier",
        "train_generative", "train_metric", "transfer_cv@small",
    ]  # fmt: skip
    lambda_runs = set(children[stage_runs["train_classifier"]])
    assert {"lambda=0.0", "lambda=0.5", "lambda=1.0", "loss=p", "mode=global", "binary"} <= lambda_runs
    assert sorted(children[stage_runs["transfer_cv@small"]]) == [f"fold={k}" for k in range(5)]
    transfer_metrics = client.get_run(stage_runs["transfer_cv@small"]).data.metrics
    assert {"accuracy_mean", "accuracy_std"} <= set(transfer_metrics)
