"""The kfp v2 pipeline: the checked-in YAML is a fresh compile with GPU requests; a real local run end to end."""

import json
import tomllib
from pathlib import Path

import mlflow
import pytest
import yaml
from tiny import tiny_config

from image_emotion.kubeflow import cluster
from image_emotion.kubeflow.images import images
from image_emotion.kubeflow.pipeline import compile_pipeline, pipeline_arguments, run_local


def test_checked_in_yaml_equals_a_fresh_compile(tmp_path, repo_root):
    # parsed, not as text: the header comment lists a dict default in an order that varies between processes
    fresh = list(yaml.safe_load_all(compile_pipeline(tmp_path / "pipeline.yaml").read_text()))
    assert list(yaml.safe_load_all((repo_root / "pipelines/image_emotion.yaml").read_text())) == fresh, (
        "pipelines/image_emotion.yaml is stale: run `image-emotion compile-pipeline` and commit it"
    )


GPU_EXECUTORS = {  # the extraction runs for the main data and, in the loop, for each transfer set
    "exec-pretrain-objects-op", "exec-finetune-detector-op", "exec-extract-regions-op", "exec-extract-regions-op-2",
    "exec-train-metric-op", "exec-train-generative-op",
}  # fmt: skip
CHECKPOINTING = {"exec-pretrain-objects-op", "exec-finetune-detector-op", "exec-train-generative-op"}


def _compiled(path: Path) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform spec per executor) of a compiled pipeline YAML."""
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _parameter(ref: dict) -> str:
    """The pipeline parameter a platform setting reads (inside a loop kfp passes it as a pipeline channel)."""
    return ref["componentInputParameter"].removeprefix("pipelinechannel--")


def _all_tasks(dag: dict, spec: dict) -> dict[str, dict]:
    """Every task of the pipeline, nested loops and conditions included, by task name."""
    found = {}
    for name, task in dag["tasks"].items():
        found[name] = task
        sub = spec["components"][task["componentRef"]["name"]].get("dag")
        if sub:
            found.update(_all_tasks(sub, spec))
    return found


def test_compiled_pipeline_runs_in_the_images_of_this_source(repo_root):
    spec, _ = _compiled(repo_root / "pipelines/image_emotion.yaml")
    built = images()
    executors = spec["deploymentSpec"]["executors"]
    by_image = {name: ex["container"]["image"] for name, ex in executors.items()}
    assert {n for n, image in by_image.items() if image == built.cuda} == GPU_EXECUTORS
    assert {n for n, image in by_image.items() if image == built.cpu} == set(executors) - GPU_EXECUTORS
    version = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["version"]
    assert built.tag.startswith(f"{version}-") and len(built.tag) == len(version) + 13
    for ex in executors.values():  # the package is in the image: nothing is pip-installed when a pod starts
        assert "pip install" not in " ".join(ex["container"]["command"])


def test_compiled_pipeline_asks_the_cluster_for_volumes_secrets_gpus_and_a_non_root_user(repo_root):
    spec, platform = _compiled(repo_root / "pipelines/image_emotion.yaml")
    executors = spec["deploymentSpec"]["executors"]
    assert set(platform) == set(executors)  # every step has its pod settings
    for name, pod in platform.items():
        mounts = {m["mountPath"]: _parameter(m["pvcNameParameter"]) for m in pod["pvcMount"]}
        expected = {cluster.DATA_MOUNT: "data_pvc"} | (
            {cluster.WORK_MOUNT: "work_pvc"} if name in CHECKPOINTING else {}
        )
        assert mounts == expected, name
        secrets = {_parameter(s["secretNameParameter"]): s for s in pod["secretAsEnv"]}
        assert set(secrets) == {"mlflow_secret", "s3_secret"}
        envs = {k["envVar"] for s in secrets.values() for k in s["keyToEnv"]}
        assert {"MLFLOW_TRACKING_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= envs
        assert pod["fieldPathAsEnv"] == [{"fieldPath": "metadata.labels['pipeline/runid']", "name": cluster.RUN_ID_ENV}]
        assert pod["securityContext"] == {"runAsUser": "10001", "runAsGroup": "10001", "runAsNonRoot": True}
        resources = executors[name]["container"].get("resources", {})
        if name in GPU_EXECUTORS:
            assert _parameter(pod["tolerations"][0]["tolerationJson"]) == "gpu_tolerations"
            assert _parameter(pod["nodeSelector"]["nodeSelectorJson"]) == "gpu_node_selector"
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "1"
            assert resources["resourceCpuRequest"] == "8" and resources["resourceMemoryLimit"] == "32G"
        else:
            assert "tolerations" not in pod and "nodeSelector" not in pod and "accelerator" not in resources
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["gpu_tolerations"]["defaultValue"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]  # the taint GPU nodes usually carry (NVIDIA GPU operator, GKE, AKS)
    assert {"data_pvc", "work_pvc", "mlflow_secret", "s3_secret", "gpu_node_selector"} <= set(inputs)
    # the secret names and volumes a platform engineer creates from deploy/kubernetes/ are the defaults here
    manifests = [
        d for f in sorted((repo_root / "deploy/kubernetes").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())
    ]
    names = {(d["kind"], d["metadata"]["name"]) for d in manifests if d}
    for kind, parameter in (("PersistentVolumeClaim", "data_pvc"), ("PersistentVolumeClaim", "work_pvc"),
                            ("Secret", "mlflow_secret"), ("Secret", "s3_secret")):  # fmt: skip
        assert (kind, inputs[parameter]["defaultValue"]) in names, (kind, parameter)


def test_compiled_pipeline_caches_by_content_retries_and_limits_its_fan_out(repo_root, tmp_path):
    spec, _ = _compiled(repo_root / "pipelines/image_emotion.yaml")
    tasks = _all_tasks(spec["root"]["dag"], spec)
    text = yaml.safe_dump(spec["root"])
    assert "pipeline_job_uuid" not in text  # no input carries the run id: it would enter every cache key
    for name, task in tasks.items():
        if "componentRef" in task and name.startswith(("register-op", "register-metric-op", "register-generative-op")):
            assert task["cachingOptions"] == {}, f"{name} must never be cached"
            assert task["retryPolicy"]["maxRetryCount"] == 2  # idempotent: a retry registers nothing new
        elif name.endswith("-op") or "-op-" in name:
            assert task["cachingOptions"] == {"enableCache": True}, name
    assert tasks["finetune-detector-op"]["retryPolicy"]["maxRetryCount"] == 2
    loops = {name: t for name, t in tasks.items() if "parameterIterator" in t}
    assert len(loops) == 3  # the λ sweep, the transfer sets and the generative sets
    assert {t["iteratorPolicy"]["parallelismLimit"] for t in loops.values()} == {cluster.DEFAULTS.parallelism}
    narrow, _ = _compiled(compile_pipeline(tmp_path / "p.yaml", parallelism=2, gpu_type="amd.com/gpu"))
    narrow_loops = [t for t in _all_tasks(narrow["root"]["dag"], narrow).values() if "parameterIterator" in t]
    assert [t["iteratorPolicy"]["parallelismLimit"] for t in narrow_loops] == [2, 2, 2]
    accelerators = {
        ex["container"]["resources"]["accelerator"]["resourceType"]
        for ex in narrow["deploymentSpec"]["executors"].values()
        if "accelerator" in ex["container"].get("resources", {})
    }
    assert accelerators == {"amd.com/gpu"}
    condition = next(t for t in tasks.values() if "triggerPolicy" in t)
    assert "min_accuracy" in condition["triggerPolicy"]["condition"]
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    expected = {
        "mlflow_tracking_uri", "mlflow_experiment", "params_yaml", "lambdas", "transfer_sets", "generative_sets",
        "min_accuracy", "data_dir", "checkpoint_root",
    }  # fmt: skip
    assert expected <= set(inputs)


def test_another_registry_changes_only_the_images(tmp_path):
    default, _ = _compiled(compile_pipeline(tmp_path / "a.yaml"))
    other, _ = _compiled(compile_pipeline(tmp_path / "b.yaml", registry="registry.example.com/ml"))
    tag = images().tag
    assert {ex["container"]["image"] for ex in other["deploymentSpec"]["executors"].values()} == {
        f"registry.example.com/ml/image-emotion:{tag}-cpu",
        f"registry.example.com/ml/image-emotion:{tag}-cuda",
    }
    for ex in (*default["deploymentSpec"]["executors"].values(), *other["deploymentSpec"]["executors"].values()):
        ex["container"].pop("image")
    assert default == other


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
