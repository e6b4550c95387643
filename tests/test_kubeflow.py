"""The kfp v2 pipeline: the checked-in YAML is a fresh compile with GPU requests, the main set's extraction fanned
out over shards and the λ sweep in one task; a real local run end to end (two extraction shards)."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import mlflow
import pytest
import yaml
from tiny import tiny_config

from image_emotion.kubeflow import cluster
from image_emotion.kubeflow.images import images
from image_emotion.kubeflow.pipeline import compile_pipeline, pipeline_arguments, run_local


@pytest.mark.slow
def test_checked_in_yaml_equals_a_fresh_compile(tmp_path, repo_root):
    # parsed, not as text: the header comment lists a dict default in an order that varies between processes
    fresh = list(yaml.safe_load_all(compile_pipeline(tmp_path / "pipeline.yaml").read_text()))
    assert list(yaml.safe_load_all((repo_root / "pipelines/image_emotion.yaml").read_text())) == fresh, (
        "pipelines/image_emotion.yaml is stale: run `image-emotion compile-pipeline` and commit it"
    )


GPU_EXECUTORS = {  # the extraction runs for each shard of the main data and, in its loop, for each transfer set
    "exec-pretrain-objects-op", "exec-finetune-detector-op", "exec-extract-regions-op", "exec-extract-regions-op-2",
    "exec-train-classifier-op", "exec-train-metric-op", "exec-train-generative-op",
}  # fmt: skip
CHECKPOINTING = {"exec-pretrain-objects-op", "exec-finetune-detector-op", "exec-train-generative-op"}
JOB_EXECUTOR = "exec-finetune-detector-job-op"  # launches the detector's TrainJob: hands it files on the work volume
WORK_VOLUME = CHECKPOINTING | {JOB_EXECUTOR}


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
        expected = {cluster.DATA_MOUNT: "data_pvc"} | ({cluster.WORK_MOUNT: "work_pvc"} if name in WORK_VOLUME else {})
        assert mounts == expected, name
        secrets = {_parameter(s["secretNameParameter"]): s for s in pod["secretAsEnv"]}
        assert set(secrets) == {"mlflow_secret", "s3_secret"}
        envs = {k["envVar"] for s in secrets.values() for k in s["keyToEnv"]}
        assert {"MLFLOW_TRACKING_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= envs
        run_id = {"fieldPath": "metadata.labels['pipeline/runid']", "name": cluster.RUN_ID_ENV}
        assert pod["fieldPathAsEnv"][0] == run_id, name
        if name != JOB_EXECUTOR:  # the job's launcher also reads its pod's name, uid, namespace (its job's owner)
            assert pod["fieldPathAsEnv"] == [run_id], name
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
    deploy = repo_root / "deploy/kubernetes"  # the sed/apply files, and the claims of the kustomize base
    files = sorted([*deploy.glob("*.yaml"), deploy / "base/volumes.yaml"])
    manifests = [d for f in files for d in yaml.safe_load_all(f.read_text())]
    names = {(d["kind"], d["metadata"]["name"]) for d in manifests if d}
    for kind, parameter in (("PersistentVolumeClaim", "data_pvc"), ("PersistentVolumeClaim", "work_pvc"),
                            ("Secret", "mlflow_secret"), ("Secret", "s3_secret")):  # fmt: skip
        assert (kind, inputs[parameter]["defaultValue"]) in names, (kind, parameter)


@pytest.mark.slow
def test_compiled_pipeline_caches_by_content_retries_and_limits_its_fan_out(repo_root, tmp_path):
    spec, _ = _compiled(repo_root / "pipelines/image_emotion.yaml")
    tasks = _all_tasks(spec["root"]["dag"], spec)
    text = yaml.safe_dump(spec["root"])
    assert "pipeline_job_uuid" not in text  # no input carries the run id: it would enter every cache key
    for name, task in tasks.items():
        if "componentRef" in task and name.startswith(("register-op", "register-metric-op", "register-generative-op")):
            assert task["cachingOptions"] == {}, f"{name} must never be cached"
            assert task["retryPolicy"]["maxRetryCount"] == cluster.RETRIES  # a retry registers nothing new
        elif name.startswith("data-version-op"):
            assert task["cachingOptions"] == {}, f"{name} must never be cached"  # an unversioned role's new value
        elif name.endswith("-op") or "-op-" in name:
            assert task["cachingOptions"] == {"enableCache": True}, name
    for name, policy in (("finetune-detector-op", cluster.GPU_RETRY), ("evaluate-op", cluster.CPU_RETRY)):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == policy["num_retries"] == cluster.RETRIES
        assert tasks[name]["retryPolicy"]["backoffDuration"] == policy["backoff_duration"]
    loops = {name: t for name, t in tasks.items() if "parameterIterator" in t}
    assert len(loops) == 3  # the main set's extraction shards, the transfer sets and the generative sets
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
    conditions = sorted(t["triggerPolicy"]["condition"] for t in tasks.values() if "triggerPolicy" in t)
    assert len(conditions) == 3  # register's, and the detector's If/Else on workers
    assert sum("min-accuracy-op" in c for c in conditions) == 1
    assert sum("workers" in c for c in conditions) == 2
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    expected = {
        "mlflow_tracking_uri", "params_yaml", "data_dir", "checkpoint_root", "extraction_shards", "workers",
        "gpus_per_worker",
    }  # fmt: skip
    assert expected <= set(inputs)
    assert not set(inputs) & {"lambdas", "transfer_sets", "generative_sets", "min_accuracy", "mlflow_experiment"}


def _transfer_loop(root: dict[str, dict]) -> str:
    """The ParallelFor over the transfer sets: its items are the output of the task reading them from params."""
    (reader,) = [
        n for n, t in root.items()
        if t.get("inputs", {}).get("parameters", {}).get("sets") == {"runtimeValue": {"constant": "transfer"}}
    ]  # fmt: skip
    (loop,) = [
        n for n, t in root.items() if f"pipelinechannel--{reader}-Output" in json.dumps(t.get("parameterIterator", {}))
    ]
    return loop


def _consumers(tasks: dict[str, dict], producer: str) -> dict[str, set[str]]:
    """Task name -> the artifact keys it reads from ``producer`` (a loop's inputs included)."""
    found: dict[str, set[str]] = {}
    for name, task in tasks.items():
        for artifact in task.get("inputs", {}).get("artifacts", {}).values():
            ref = artifact.get("taskOutputArtifact", {})
            if ref.get("producerTask") == producer:
                found.setdefault(name, set()).add(ref["outputArtifactKey"])
    return found


def test_the_main_extraction_fans_out_over_gpu_shards_and_one_task_sweeps_lambda(repo_root):
    spec, platform = _compiled(repo_root / "pipelines/image_emotion.yaml")
    root = spec["root"]["dag"]["tasks"]
    tasks = _all_tasks(spec["root"]["dag"], spec)
    executors = spec["deploymentSpec"]["executors"]
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    # by default one pod extracts the whole set, as before sharding existed
    assert inputs["extraction_shards"] == {"defaultValue": 1.0, "isOptional": True, "parameterType": "NUMBER_INTEGER"}
    # the shard indices 0..N-1 come from a task: kfp's ParallelFor takes a list, extraction_shards is an int
    indices = root["shard-indices-op"]
    assert indices["inputs"]["parameters"]["shards"] == {"componentInputParameter": "extraction_shards"}
    (loop_name,) = [
        n for n, t in root.items()
        if t.get("parameterIterator", {}).get("items") == {"inputParameter": "pipelinechannel--shard-indices-op-Output"}
    ]  # fmt: skip
    loop = root[loop_name]
    assert loop["iteratorPolicy"]["parallelismLimit"] == cluster.DEFAULTS.parallelism
    assert loop["inputs"]["parameters"]["pipelinechannel--shard-indices-op-Output"]["taskOutputParameter"] == {
        "outputParameterKey": "Output", "producerTask": "shard-indices-op"
    }  # fmt: skip
    (branch,) = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"].values()  # one task per shard
    executor = spec["components"][branch["componentRef"]["name"]]["executorLabel"]
    assert executor in GPU_EXECUTORS and executor.startswith("exec-extract-regions-op")
    assert executors[executor]["container"]["image"] == images().cuda
    accelerator = executors[executor]["container"]["resources"]["accelerator"]
    assert (accelerator["resourceType"], accelerator["resourceCount"]) == (cluster.DEFAULTS.gpu_type, "1")
    assert _parameter(platform[executor]["tolerations"][0]["tolerationJson"]) == "gpu_tolerations"
    shard_inputs = branch["inputs"]["parameters"]
    assert shard_inputs["shard"] == {"componentInputParameter": loop["parameterIterator"]["itemInput"]}
    assert shard_inputs["shards"] == {"componentInputParameter": "pipelinechannel--extraction_shards"}
    assert {"detector", "dataset"} <= set(branch["inputs"]["artifacts"])

    # the merge reads the collected parts and feeds every task that read the unsharded extraction
    merge = root["merge-features-op"]
    assert merge["inputs"]["artifacts"]["parts"]["taskOutputArtifact"] == {
        "outputArtifactKey": "pipelinechannel--extract-regions-op-features", "producerTask": loop_name
    }  # fmt: skip
    assert executors[spec["components"][merge["componentRef"]["name"]]["executorLabel"]]["container"]["image"] == (
        images().cpu
    )
    assert _consumers(root, "merge-features-op") == {
        "train-classifier-op": {"features"}, "evaluate-op": {"features"}
    }  # fmt: skip
    assert _consumers(tasks, loop_name) == {"merge-features-op": {"pipelinechannel--extract-regions-op-features"}}
    assert not _consumers(tasks, "extract-regions-op")  # no task reads a shard's part but through the merge

    # the λ sweep is one task (its heads train in one vectorized pass): no loop over λ, no per-λ component
    assert not [t for t in tasks.values() if "lambdas" in json.dumps(t.get("parameterIterator", {}))]
    sweep = [n for n, t in tasks.items() if "train-classifier" in t["componentRef"]["name"]]
    assert sweep == ["train-classifier-op"]
    assert "lambdas" not in root["train-classifier-op"]["inputs"]["parameters"]  # classifier.lambdas of params_yaml
    assert not [c for c in spec["components"] if "lambda" in c or "select-classifier" in c]
    transfer_loop = _transfer_loop(root)
    register = next(n for n, t in root.items() if "triggerPolicy" in t)  # the condition around register-op
    assert _consumers(tasks, "train-classifier-op").keys() == {transfer_loop, "evaluate-op", "report-op", register}


def _detector_branches(spec: dict) -> tuple[str, dict[str, dict], dict[str, dict]]:
    """(the If/Else group's task name, its branches' tasks {"job", "single"}, the branches {"job", "single"}) of
    the detector's fine-tuning."""
    root = spec["root"]["dag"]["tasks"]
    (group,) = [
        n for n, t in root.items() if "finetune-detector" in json.dumps(spec["components"][t["componentRef"]["name"]])
    ]
    branches = spec["components"][root[group]["componentRef"]["name"]]["dag"]["tasks"]
    found_tasks, found_branches = {}, {}
    for branch in branches.values():
        (task,) = spec["components"][branch["componentRef"]["name"]]["dag"]["tasks"].values()
        key = "job" if task["componentRef"]["name"] == "comp-finetune-detector-job-op" else "single"
        found_tasks[key], found_branches[key] = task, branch
    return group, found_tasks, found_branches


def test_the_detector_fine_tunes_in_a_trainjob_when_workers_exceed_one(repo_root):
    spec, platform = _compiled(repo_root / "pipelines/image_emotion.yaml")
    root = spec["root"]["dag"]["tasks"]
    tasks = _all_tasks(spec["root"]["dag"], spec)
    executors = spec["deploymentSpec"]["executors"]
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    for name in ("workers", "gpus_per_worker"):  # by default the one GPU pod fine-tunes, as before
        assert inputs[name] == {"defaultValue": 1.0, "isOptional": True, "parameterType": "NUMBER_INTEGER"}, name

    group, branch_tasks, branches = _detector_branches(spec)
    assert sorted(branches) == ["job", "single"]
    workers_over_one = "int(inputs.parameter_values['pipelinechannel--workers']) > 1"
    assert branches["job"]["triggerPolicy"]["condition"] == workers_over_one
    assert branches["single"]["triggerPolicy"]["condition"] == f"!({workers_over_one})"  # dsl.Else

    # the launcher: the CPU image, the work volume for the job's files, no accelerator; the job runs the CUDA image
    job = branch_tasks["job"]
    job_executor = spec["components"][job["componentRef"]["name"]]["executorLabel"]
    assert job_executor == JOB_EXECUTOR
    assert executors[JOB_EXECUTOR]["container"]["image"] == images().cpu
    assert "accelerator" not in executors[JOB_EXECUTOR]["container"]["resources"]
    mounts = {m["mountPath"]: _parameter(m["pvcNameParameter"]) for m in platform[JOB_EXECUTOR]["pvcMount"]}
    assert mounts == {cluster.DATA_MOUNT: "data_pvc", cluster.WORK_MOUNT: "work_pvc"}
    assert "tolerations" not in platform[JOB_EXECUTOR] and "nodeSelector" not in platform[JOB_EXECUTOR]
    parameters = job["inputs"]["parameters"]
    assert parameters["image"] == {"runtimeValue": {"constant": images().cuda}}
    assert _parameter(parameters["workers"]) == "workers"
    assert _parameter(parameters["gpus_per_worker"]) == "gpus_per_worker"
    for name in ("data_pvc", "work_pvc", "mlflow_secret", "s3_secret", "gpu_tolerations", "gpu_node_selector"):
        assert _parameter(parameters[name]) == name  # the job's pods get the run's volumes, secrets, GPU nodes
    assert parameters["gpu_type"] == {"runtimeValue": {"constant": cluster.DEFAULTS.gpu_type}}
    assert set(job["inputs"]["artifacts"]) == {"dataset", "objects"}
    assert job["retryPolicy"]["maxRetryCount"] == cluster.RETRIES  # a retry submits a new TrainJob
    # the launcher's pod, whose uid names and owns each attempt's TrainJob (trainjob.for_attempt)
    fields = {f["name"]: f["fieldPath"] for f in platform[JOB_EXECUTOR]["fieldPathAsEnv"]}
    assert {k: fields.get(k) for k in ("POD_NAME", "POD_UID", "POD_NAMESPACE")} == {
        "POD_NAME": "metadata.name", "POD_UID": "metadata.uid", "POD_NAMESPACE": "metadata.namespace",
    }  # fmt: skip

    # the Else branch: the one-GPU fine-tuning as before
    single = branch_tasks["single"]
    single_executor = spec["components"][single["componentRef"]["name"]]["executorLabel"]
    assert single_executor == "exec-finetune-detector-op" and single_executor in GPU_EXECUTORS
    assert executors[single_executor]["container"]["image"] == images().cuda
    assert executors[single_executor]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert {m["mountPath"] for m in platform[single_executor]["pvcMount"]} == {cluster.DATA_MOUNT, cluster.WORK_MOUNT}
    assert set(single["inputs"]["artifacts"]) == set(job["inputs"]["artifacts"])

    # every reader of the detector reads the group's dsl.OneOf output: the detector of the branch that ran
    outputs = spec["components"][root[group]["componentRef"]["name"]]["dag"]["outputs"]["artifacts"]
    (oneof_key,) = outputs
    selectors = {(s["producerSubtask"], s["outputArtifactKey"]) for s in outputs[oneof_key]["artifactSelectors"]}
    group_tasks = spec["components"][root[group]["componentRef"]["name"]]["dag"]["tasks"]
    branch_names = {key: name for name, b in group_tasks.items() for key, other in branches.items() if b is other}
    assert selectors == {
        (branch_names["job"], "pipelinechannel--finetune-detector-job-op-detector"),
        (branch_names["single"], "pipelinechannel--finetune-detector-op-detector"),
    }
    for key, op in (("job", "finetune-detector-job-op"), ("single", "finetune-detector-op")):
        inner = spec["components"][branches[key]["componentRef"]["name"]]["dag"]["outputs"]["artifacts"]
        assert inner[f"pipelinechannel--{op}-detector"]["artifactSelectors"] == [
            {"outputArtifactKey": "detector", "producerSubtask": op}
        ]
    readers = _consumers(root, group)
    register = next(n for n, t in root.items() if "min-accuracy-op" in json.dumps(t.get("triggerPolicy", {})))
    shards = next(n for n, t in root.items() if "shard-indices-op" in json.dumps(t.get("parameterIterator", {})))
    transfer_loop = _transfer_loop(root)
    assert readers == {name: {oneof_key} for name in ("report-op", register, shards, transfer_loop)}
    assert not _consumers(tasks, "finetune-detector-op") and not _consumers(tasks, "finetune-detector-job-op")


def _workers_job(tmp_path: Path, run_id: str = "run-7") -> tuple[dict, dict[str, Path]]:
    from image_emotion.kubeflow.components import job_manifest_for

    return job_manifest_for(
        run_id, "registry.example/image-emotion:1-cuda", workers=3, gpus_per_worker=2,
        mlflow_tracking_uri="http://mlflow.mlops:5000", checkpoint=tmp_path / "ckpt/run-7/finetune_detector/last.pt",
        work_root=tmp_path / "work",
    )  # fmt: skip


def test_the_detector_job_reads_the_copied_inputs_and_writes_beside_them(tmp_path):
    manifest, files = _workers_job(tmp_path)
    step = tmp_path / "work/jobs/run-7/finetune_detector"
    assert files == {
        "params": step / "in/params.yaml", "dataset": step / "in/dataset", "objects": step / "in/objects/detector.pt",
        "model": step / "out/detector.pt", "metrics": step / "out/detector.json",
    }  # fmt: skip
    trainer = manifest["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 2)
    assert trainer["image"] == "registry.example/image-emotion:1-cuda"
    command = trainer["args"]
    assert command[:6] == ["torchrun", "--nnodes", "3", "--nproc-per-node", "2", "-m"]
    stage = command.index("finetune-detector")
    options = dict(zip(command[stage + 1 :: 2], command[stage + 2 :: 2], strict=True))
    assert options == {
        "--params": str(step / "in/params.yaml"),
        "--prepared": str(step / "in/dataset/prepared"),
        "--objects": str(step / "in/objects/detector.pt"),
        "--checkpoint": str(tmp_path / "ckpt/run-7/finetune_detector/last.pt"),
        "--model": str(step / "out/detector.pt"),
        "--metrics": str(step / "out/detector.json"),
    }
    name = manifest["metadata"]["name"]
    # the run's base name; each attempt of the step adds its own suffix (trainjob.for_attempt)
    assert name.startswith("finetune-detector-") and name == _workers_job(tmp_path)[0]["metadata"]["name"]
    assert _workers_job(tmp_path, "run-8")[0]["metadata"]["name"] != name  # one job per pipeline run
    _, default_files = job_manifest_for_default("run-7")
    assert default_files["model"] == Path(cluster.WORK_MOUNT) / "jobs/run-7/finetune_detector/out/detector.pt"


def job_manifest_for_default(run_id: str) -> tuple[dict, dict[str, Path]]:
    from image_emotion.kubeflow.components import job_manifest_for

    return job_manifest_for(
        run_id, "i", workers=2, gpus_per_worker=1, mlflow_tracking_uri="http://m:5000", checkpoint="/c/last.pt"
    )


def test_the_job_namespace_is_the_pods_own_else_the_input(tmp_path, monkeypatch):
    from image_emotion.errors import ConfigError
    from image_emotion.kubeflow.components import job_namespace

    own = tmp_path / "namespace"
    monkeypatch.setattr(cluster, "NAMESPACE_FILE", str(own))
    assert job_namespace("given") == "given"
    with pytest.raises(ConfigError, match="no namespace for the TrainJob"):
        job_namespace()
    own.write_text("ml-team\n")
    assert job_namespace() == job_namespace("given") == "ml-team"


def test_the_detector_job_op_hands_over_files_and_returns_the_jobs_detector(tmp_path, monkeypatch):
    from kfp import dsl
    from tiny import job_launcher_inputs

    from image_emotion.kubeflow import trainjob
    from image_emotion.kubeflow.components import finetune_detector_job_op

    dataset, objects = job_launcher_inputs(tmp_path, monkeypatch, namespace=None)  # no namespace file
    submitted = []

    def fake_job(manifest, namespace):
        command = manifest["spec"]["trainer"]["args"]
        stage = command.index("finetune-detector")
        options = dict(zip(command[stage + 1 :: 2], command[stage + 2 :: 2], strict=True))
        assert Path(options["--prepared"], "manifest.csv").read_text() == "path\n"  # copied before the submit
        assert Path(options["--objects"]).read_bytes() == b"objects"
        assert "mlflow" in Path(options["--params"]).read_text()
        Path(options["--model"]).parent.mkdir(parents=True)
        Path(options["--model"]).write_bytes(b"trained")
        Path(options["--metrics"]).write_text(json.dumps({"recall_at_2": 0.75, "device": "cuda"}))
        submitted.append((manifest, namespace, options))
        return {}

    monkeypatch.setattr(trainjob, "run_training_job", fake_job)
    out, metrics = dsl.Model(uri=str(tmp_path / "out")), dsl.Metrics(uri=str(tmp_path / "metrics.json"))
    args = {
        "params_yaml": yaml.safe_dump(tiny_config().to_dict()), "mlflow_tracking_uri": "http://mlflow.mlops:5000",
        "data_dir": str(tmp_path), "checkpoint_root": str(tmp_path / "work/checkpoints"),
        "dataset": dsl.Dataset(uri=str(dataset)), "objects": dsl.Model(uri=str(objects)),
        "image": "registry.example/image-emotion:1-cuda", "workers": 2, "gpus_per_worker": 1, "data_pvc": "d",
        "work_pvc": "w", "mlflow_secret": "m", "s3_secret": "s", "gpu_type": "amd.com/gpu",
        "gpu_tolerations": [{"key": "gpu", "operator": "Exists"}], "gpu_node_selector": {"pool": "a100"},
    }  # fmt: skip
    finetune_detector_job_op(**args, detector=out, metrics=metrics, namespace="ml-team")
    ((manifest, namespace, options),) = submitted
    assert namespace == "ml-team" and manifest["spec"]["trainer"]["numNodes"] == 2
    assert manifest["metadata"]["name"].startswith("finetune-detector-")  # and this attempt's suffix
    pod = trainjob.node_pod_template(manifest)["spec"]
    assert [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"][:2]] == ["d", "w"]  # the run's volumes
    assert pod["containers"][0]["resources"]["limits"]["amd.com/gpu"] == "1"
    assert (pod["tolerations"], pod["nodeSelector"]) == ([{"key": "gpu", "operator": "Exists"}], {"pool": "a100"})
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in pod["containers"][0]["env"] if "valueFrom" in e}
    assert secrets == {"m", "s"}
    step = tmp_path / "work/jobs/run-9/finetune_detector"
    assert options["--model"] == str(step / "out/detector.pt")
    assert options["--checkpoint"] == str(tmp_path / "work/checkpoints/run-9/finetune_detector/last.pt")
    assert (tmp_path / "out/detector.pt").read_bytes() == b"trained"
    assert json.loads((tmp_path / "out/detector.json").read_text())["recall_at_2"] == 0.75
    assert metrics.metadata == {"recall_at_2": 0.75}

    monkeypatch.setattr(trainjob, "run_training_job", lambda manifest, namespace: {})  # succeeded, wrote nothing
    monkeypatch.setenv(cluster.RUN_ID_ENV, "run-10")
    monkeypatch.setenv("IMAGE_EMOTION_PIPELINE_RUN", "run-10")
    with pytest.raises(trainjob.TrainingJobError, match=r"succeeded but wrote no .*run-10/finetune_detector/out"):
        finetune_detector_job_op(**args, detector=dsl.Model(uri=str(tmp_path / "o2")), metrics=metrics, namespace="n")


def test_the_shard_indices_are_the_loops_items():
    from image_emotion.errors import ConfigError
    from image_emotion.kubeflow.components import shard_indices_op

    assert shard_indices_op(1) == [0] and shard_indices_op(3) == [0, 1, 2]
    assert shard_indices_op(2.0) == [0, 1]  # a JSON number
    for bad in (0, -1, 1.5):
        with pytest.raises(ConfigError, match="extraction_shards must be a whole number of at least 1"):
            shard_indices_op(bad)


@pytest.mark.slow
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
    for spec, cuda in ((default, images().cuda), (other, f"registry.example.com/ml/image-emotion:{tag}-cuda")):
        job = _detector_branches(spec)[1]["job"]  # the PyTorchJob's image is a constant input of its launcher
        assert job["inputs"]["parameters"].pop("image") == {"runtimeValue": {"constant": cuda}}
    assert default == other


def test_a_source_change_outside_the_pipeline_changes_only_the_image_reference(tmp_path, repo_root):
    """A recompile after editing a module the components import (not their own code) yields the same YAML but for
    the image tag, which follows the source: nothing else of the source leaks into the package."""
    import shutil

    from image_emotion.kubeflow.images import BUILT_FROM

    copy = tmp_path / "source"
    for name in BUILT_FROM:
        source = repo_root / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif source.is_file():  # a lock not generated here is in neither digest
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    heads = copy / "src/image_emotion/models/multilevel.py"
    heads.write_text(heads.read_text() + "\n# an edit\n")
    before, after = images(root=repo_root), images(root=copy)
    assert after.tag != before.tag
    default = compile_pipeline(tmp_path / "a.yaml", built=before).read_text()
    edited = compile_pipeline(tmp_path / "b.yaml", built=after).read_text()
    assert edited != default and before.tag not in edited
    assert list(yaml.safe_load_all(edited.replace(after.tag, before.tag))) == list(yaml.safe_load_all(default))


def test_pipeline_arguments_are_the_params_once_and_the_data_versions(tmp_path):
    args = pipeline_arguments(tiny_config(), tmp_path)
    assert list(args) == ["params_yaml", "data_versions"]
    assert yaml.safe_load(args["params_yaml"])["detector"]["min_size"] == 96
    # every role of the tiny config is drawn from the params (already in every cache key)
    assert args["data_versions"] == {
        "data": "synthetic", "detector_data": "synthetic", "transfer:small": "synthetic",
        "generative:ekman": "synthetic",
    }  # fmt: skip


def _retry_seconds(duration: str) -> int:
    assert duration.endswith("s"), duration
    return int(float(duration.removesuffix("s")))


def test_long_steps_are_retried_within_a_max_duration_that_covers_every_attempt(repo_root):
    """Argo counts backoff.maxDuration from the first attempt's start and gives a retried pod only what is left of
    it: with kfp's default (3600 s) a GPU step that failed after an hour was never retried (no checkpoint resume)."""
    spec, platform = _compiled(repo_root / "pipelines/image_emotion.yaml")
    tasks = _all_tasks(spec["root"]["dag"], spec)
    long_running = GPU_EXECUTORS | {JOB_EXECUTOR}
    checked = set()
    for name, task in tasks.items():
        executor = spec["components"][task["componentRef"]["name"]].get("executorLabel")
        if executor is None:
            continue  # a loop or a condition
        policy = task["retryPolicy"]
        attempts = policy["maxRetryCount"] + 1
        waits = sum(
            _retry_seconds(policy["backoffDuration"]) * policy["backoffFactor"] ** i for i in range(attempts - 1)
        )
        # every attempt at its own timeout and the waits between them fit in the max duration
        deadline = int(platform[executor]["activeDeadlineSeconds"])
        assert _retry_seconds(policy["backoffMaxDuration"]) >= attempts * deadline + waits, name
        if executor in long_running:
            checked.add(executor)
            assert deadline == cluster.ATTEMPT_TIMEOUT_S >= 12 * 3600, name
            expected = cluster.CPU_RETRY if executor == JOB_EXECUTOR else cluster.GPU_RETRY  # the launcher: a CPU pod
            assert policy["backoffMaxDuration"] == expected["backoff_max_duration"], name
        else:  # a CPU step's day, or a bookkeeping step's hour (tests/test_kubeflow_resources.py: which is which)
            assert deadline in (cluster.ATTEMPT_TIMEOUT_S, cluster.SMALL_TIMEOUT_S), name
    assert checked == long_running
    assert cluster.GPU_RETRY["backoff_max_duration"] == "270180s"  # 3 × (24 h + 1 h) + 60 s + 120 s


def _prepare_tasks(spec: dict) -> dict[str, dict]:
    tasks = _all_tasks(spec["root"]["dag"], spec)
    return {n: t for n, t in tasks.items() if t["componentRef"]["name"].startswith("comp-prepare-op")}


def test_each_prepare_step_takes_its_roles_data_version_so_new_data_miss_the_cache(repo_root):
    """kfp's cache key is params, inputs and image: the data volume is not in it, so new data loaded there hit
    the cache and trained on the old manifest. Each prepare step now takes its role's data version as an input
    (its value is part of the key), from a task that is never cached."""
    spec, _ = _compiled(repo_root / "pipelines/image_emotion.yaml")
    tasks = _all_tasks(spec["root"]["dag"], spec)
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["data_versions"] == {"defaultValue": {}, "isOptional": True, "parameterType": "STRUCT"}
    prepares = _prepare_tasks(spec)
    assert len(prepares) == 4  # detector, main, each transfer set, each generative set
    roles = set()
    for name, task in prepares.items():
        assert task["cachingOptions"] == {"enableCache": True}, name  # the version makes the cache safe
        parameters = task["inputs"]["parameters"]
        source = parameters["data_version"]["taskOutputParameter"]
        version = tasks[source["producerTask"]]
        assert version["componentRef"]["name"].startswith("comp-data-version-op")
        assert version["cachingOptions"] == {}, "the version task must run every time (an unversioned role)"
        assert _parameter(version["inputs"]["parameters"]["data_versions"]) == "data_versions"
        assert version["inputs"]["parameters"]["role"] == parameters["role"], name  # the prepare step's own role
        roles.add(json.dumps(parameters["role"], sort_keys=True))
    assert len(roles) == 4

    # what the version task gives: the role's entry (same data: same key; new data: another key), else a new
    # value every run
    from image_emotion.kubeflow.pipeline import data_version_op

    versions = {"data": "a1.dir", "transfer:small": "b2.dir"}
    assert data_version_op(versions, "main") == data_version_op(dict(versions), "main") == "a1.dir"
    assert data_version_op({**versions, "data": "c3.dir"}, "main") == "c3.dir"
    assert data_version_op(versions, "small") == "b2.dir"
    unversioned = {data_version_op(versions, "detector") for _ in range(3)} | {data_version_op({}, "main")}
    assert len(unversioned) == 4 and all(v.startswith("unversioned-") for v in unversioned)


@pytest.mark.slow
def test_the_prepare_cache_hits_for_the_same_data_version_only(tmp_path, mlflow_uri, monkeypatch):
    """The pipeline's wiring (a never-cached version task feeding the prepare step) under kfp.local's cache, which
    keys a task as kfp's backend does, by its inputs' values: the same version reuses the manifest, a new version
    and an unversioned role prepare again."""
    from kfp import dsl, local

    from image_emotion.kubeflow.components import build_components
    from image_emotion.kubeflow.pipeline import data_version_op, environment

    monkeypatch.chdir(tmp_path)
    prepare_op = build_components(images())["prepare_op"]
    version_op = dsl.component(data_version_op, base_image=images().cpu, install_kfp_package=False)

    @dsl.pipeline
    def prepare_main(params_yaml: str, data_versions: dict) -> dsl.Dataset:
        version = version_op(data_versions=data_versions, role="main").set_caching_options(False)
        task = prepare_op(
            params_yaml=params_yaml, role="main", mlflow_tracking_uri=mlflow_uri, data_dir=str(tmp_path),
            data_version=version.output,
        )  # fmt: skip
        return task.outputs["dataset"]

    runner = local.SubprocessRunner(use_venv=False)
    local.init(runner, pipeline_root=str(tmp_path / "root"), enable_caching=True)
    params = yaml.safe_dump(tiny_config().to_dict())
    try:
        with environment(**{cluster.RUN_ID_ENV: "cache-test"}):
            first, same, new, none, none_again = [
                prepare_main(params_yaml=params, data_versions=versions).output.uri
                for versions in ({"data": "v1"}, {"data": "v1"}, {"data": "v2"}, {}, {})
            ]
    finally:
        local.init(runner, pipeline_root=str(tmp_path / "root"))  # caching off again for later tests
    assert same == first  # a cache hit: the first run's manifest
    assert len({first, new, none, none_again}) == 4  # a new version, and no version, prepare again


def _dvc_project(root: Path, md5: str) -> Path:
    """A checkout with a real transfer set under DVC: ``data/raw/ArtPhoto`` and its ``.dvc`` file (hash ``md5``)."""
    data = root / "data/raw/ArtPhoto"
    data.mkdir(parents=True, exist_ok=True)
    (data / "a.jpg").write_bytes(b"jpg")
    out = {"md5": md5, "size": 3, "nfiles": 1, "hash": "md5", "path": "ArtPhoto"}
    (root / "data/raw/ArtPhoto.dvc").write_text(yaml.safe_dump({"outs": [out]}))
    return root


def test_the_submit_path_fills_each_real_roles_dvc_hash(tmp_path):
    config = tiny_config(**{"transfer.sets": "[{name: art, dataset: artphoto, root: data/raw/ArtPhoto}]"})
    first = pipeline_arguments(config, _dvc_project(tmp_path, "0a" * 16 + ".dir"))["data_versions"]
    assert first["transfer:art"] == "0a" * 16 + ".dir" and first["data"] == "synthetic"
    again = pipeline_arguments(config, tmp_path)["data_versions"]
    new = pipeline_arguments(config, _dvc_project(tmp_path, "0b" * 16 + ".dir"))["data_versions"]
    assert again == first and new["transfer:art"] != first["transfer:art"]  # `dvc add` of new data: a new key
    (tmp_path / "data/raw/ArtPhoto/b.jpg").write_bytes(b"more")  # changed since DVC recorded it: no version
    assert "transfer:art" not in pipeline_arguments(config, tmp_path)["data_versions"]
    assert "transfer:art" not in pipeline_arguments(config, tmp_path / "elsewhere")["data_versions"]  # not here


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


UNSHARDED = """
import sys
from kfp import dsl
from image_emotion.kubeflow.components import extract_regions_op, merge_features_op
params, uri, detector, objects, dataset, out = sys.argv[1:]
extract_regions_op(  # shard 0 of 1 (the defaults): the whole set, as one pod extracts it
    open(params).read(), uri, out, dsl.Model(uri=detector), dsl.Model(uri=objects), dsl.Dataset(uri=dataset),
    dsl.Dataset(uri=f"{out}/part"), dsl.Metrics(uri=f"{out}/part.json"),
)
merge_features_op([dsl.Dataset(uri=f"{out}/part")], dsl.Dataset(uri=f"{out}/merged"), dsl.Metrics(uri=f"{out}/m"))
"""


def _unsharded_extraction(run_dir: Path, config, out: Path) -> tuple[Path, Path]:
    """The pipeline's extraction of the run's main set with ``extraction_shards`` 1, its components' own code in a
    fresh process as in a pod: (the one part's cache, the merged cache)."""
    (main,) = [p.parent for p in run_dir.glob("prepare-op*/dataset/role.txt") if p.read_text() == "main"]
    params = out / "params.yaml"
    out.mkdir()
    params.write_text(yaml.safe_dump(config.to_dict()))
    detector = next(run_dir.glob("**/finetune-detector-op/detector"))  # inside the one-GPU branch
    objects = next(run_dir.glob("**/pretrain-objects-op/objects"))
    env = {**os.environ, cluster.RUN_ID_ENV: "unsharded"}
    uri = f"sqlite:///{out / 'mlflow.db'}"
    args = [sys.executable, "-c", UNSHARDED, str(params), uri, str(detector), str(objects), str(main)]
    done = subprocess.run([*args, str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "part/cache", out / "merged/cache"


@pytest.mark.e2e
def test_local_run_of_the_whole_pipeline_registers_a_model(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    config = tiny_config(**{"register.model_name": "kfp-emotion"})
    run_dir = Path(run_local(config, tmp_path / "root", mlflow_tracking_uri=uri, extraction_shards=2)["run_dir"])
    assert run_dir.parent == tmp_path / "root"
    page = Path(next(run_dir.glob("report-op/html"))).read_text()
    markdown = Path(next(run_dir.glob("report-op/markdown"))).read_text()
    evaluation = json.loads(Path(next(run_dir.glob("evaluate-op/metrics"))).read_text())
    # the report's Table 3 main row carries the evaluate step's test accuracy, next to FI's published 75.46
    main_row = next(line for line in markdown.splitlines() if line.startswith("| main (synthetic)"))
    assert main_row.split(" | ")[3:5] == [f"{100 * evaluation['test_accuracy']:.1f}", "75.46"]
    assert "Not the paper's data." in page and 'src="data:image/png;base64,' in page  # one self-contained file
    # one task swept every λ and chose λ* on validation
    sweep = json.loads(next(run_dir.glob("train-classifier-op/classifier/lambda_sweep.json")).read_text())
    summary = json.loads(next(run_dir.glob("train-classifier-op/classifier/classifier.json")).read_text())
    assert [r["lambda"] for r in sweep] == [0.0, 0.5, 1.0]
    assert summary["best_lambda"] == max(sweep, key=lambda r: (r["val_accuracy"], -r["val_nll"]))["lambda"]
    client = mlflow.MlflowClient(uri)
    versions = client.search_model_versions("name='kfp-emotion'")
    assert len(versions) == 1  # the register step ran under the accuracy condition
    retrieval = client.get_model_version_by_alias(config.register.retrieval_model_name, "champion")
    assert int(retrieval.version) == 1 and float(retrieval.tags["test_map8"]) > 0  # seed 002's model, its own name
    # the report's seed-002 section reads the retrieve step's measures (the collected transfer set included)
    measures = json.loads(Path(next(run_dir.glob("retrieve-op/metrics"))).read_text())
    small = json.loads(Path(next(run_dir.glob("for-loop-*/retrieve-transfer-op/result"))).read_text())
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
    lambda_runs = children[stage_runs["train_classifier"]]
    assert {"lambda=0.0", "lambda=0.5", "lambda=1.0", "loss=p", "mode=global", "binary"} <= set(lambda_runs)
    assert len(lambda_runs) == len(set(lambda_runs))  # each training once
    assert sorted(children[stage_runs["transfer_cv@small"]]) == [f"fold={k}" for k in range(5)]
    transfer_metrics = client.get_run(stage_runs["transfer_cv@small"]).data.metrics
    assert {"accuracy_mean", "accuracy_std"} <= set(transfer_metrics)

    # the two shards' parts (tiny: 48 images in 3 cache shards of 16) merged are the unsharded extraction, byte for
    # byte; with extraction_shards 1 the one part is the whole cache and its merge changes nothing
    totals = json.loads(next(run_dir.glob("merge-features-op/features/extract.json")).read_text())["datasets"]
    assert totals["cache"] == {"images": 48, "shards": 3, "parts": 2, "shards_computed": 3, "shards_reused": 0}
    merged = _tree(next(run_dir.glob("merge-features-op/features/cache")))
    parts = [_tree(p) for p in sorted(run_dir.glob("for-loop-*/extract-regions-op/features/cache"))]
    assert len(parts) == 2 and all(0 < len(part) < len(merged) for part in parts)
    assert set(parts[0]) | set(parts[1]) == set(merged)
    one_part, one_merged = _unsharded_extraction(run_dir, config, tmp_path / "unsharded")
    assert merged == _tree(one_part) == _tree(one_merged)
