"""What a shared cluster needs of every task of the pipeline, checked on a fresh compile: CPU and memory requests and
limits of the task's size class, a timeout and retries sized from it, the images' non-root user, a HOME that any
uid may write, the S3 endpoint from the s3 secret, and the data volume (which kfp-kubernetes 2.17 cannot mount
read-only)."""

import copy
import inspect
import re

import pytest
import yaml
from kfp import kubernetes
from kfp.kubernetes import kubernetes_executor_config_pb2

from image_emotion.kubeflow import cluster
from image_emotion.kubeflow.components import GPU_COMPONENTS
from image_emotion.kubeflow.pipeline import compile_pipeline

# the bookkeeping steps: they read their parameters and return a value (cluster.SMALL_STEP)
SMALL_COMPONENTS = {"data_version_op", "set_roles_op", "min_accuracy_op", "shard_indices_op"}
_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def quantity(text: str) -> float:
    """A Kubernetes quantity ("250m", "16", "512M", "2Gi") as a number."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(text))
    assert match and match[2] in _UNITS, f"not a quantity: {text!r}"
    return float(match[1]) * _UNITS[match[2]]


def _seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration.removesuffix("s"))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, tuple[dict, dict, list[dict]]]:
    """executor -> (its container, its Kubernetes settings, the tasks that run it) of a fresh compile."""
    spec, platform = yaml.safe_load_all(compile_pipeline(tmp_path_factory.mktemp("pipeline") / "p.yaml").read_text())
    executors = spec["deploymentSpec"]["executors"]
    pods = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    tasks: dict[str, list[dict]] = {}

    def walk(dag: dict) -> None:
        for task in dag["tasks"].values():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:  # a loop or a condition
                walk(component["dag"])
            else:
                tasks.setdefault(component["executorLabel"], []).append(task)

    walk(spec["root"]["dag"])
    assert set(tasks) == set(executors) == set(pods)  # every executor runs, and has its pod settings
    return {name: (executors[name]["container"], pods[name], tasks[name]) for name in executors}


def _size(executor: str) -> cluster.StepSize:
    """The size class an executor's component belongs to ("exec-extract-regions-op-2" -> extract_regions_op)."""
    function = re.sub(r"-\d+$", "", executor.removeprefix("exec-")).replace("-", "_")
    if function in GPU_COMPONENTS:
        return cluster.GPU_STEP
    return cluster.SMALL_STEP if function in SMALL_COMPONENTS else cluster.CPU_STEP


def _problems(executor: str, container: dict, pod: dict, tasks: list[dict]) -> list[str]:
    """What a task of ``executor`` lacks that a shared cluster needs (empty: nothing)."""
    found = []
    resources = container.get("resources", {})
    keys = ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit")
    found += [f"{executor}: no {key}" for key in keys if key not in resources]
    if not found:
        if quantity(resources["resourceCpuLimit"]) < quantity(resources["resourceCpuRequest"]):
            found.append(f"{executor}: CPU limit below its request")
        if resources["resourceMemoryLimit"] != resources["resourceMemoryRequest"]:
            found.append(f"{executor}: memory limit is not its request")
    deadline = int(pod.get("activeDeadlineSeconds", 0))
    if deadline <= 0:
        found.append(f"{executor}: no timeout (activeDeadlineSeconds)")
    for task in tasks:
        policy = task.get("retryPolicy")
        if not policy:
            found.append(f"{executor}: no retry policy")
            continue
        attempts = policy["maxRetryCount"] + 1
        waits = sum(_seconds(policy["backoffDuration"]) * policy["backoffFactor"] ** i for i in range(attempts - 1))
        if _seconds(policy["backoffMaxDuration"]) < attempts * deadline + waits:
            found.append(f"{executor}: the retries' max duration cuts an attempt short")
    context = pod.get("securityContext", {})
    if context.get("runAsNonRoot") is not True or int(context.get("runAsUser", 0)) == 0:
        found.append(f"{executor}: no non-root securityContext")
    if {e["name"]: e["value"] for e in container.get("env", [])}.get("HOME") != cluster.HOME:
        found.append(f"{executor}: HOME is not {cluster.HOME}")
    return found


def test_every_task_has_requests_limits_a_timeout_retries_a_non_root_user_and_a_writable_home(compiled):
    assert [
        p for name, (container, pod, tasks) in compiled.items() for p in _problems(name, container, pod, tasks)
    ] == []


def test_each_task_gets_its_size_class(compiled):
    sizes = {}
    for name, (container, pod, tasks) in compiled.items():
        size = _size(name)
        sizes.setdefault(size.name, set()).add(name)
        resources = container["resources"]
        assert (
            resources["resourceCpuRequest"], resources["resourceCpuLimit"], resources["resourceMemoryRequest"],
            resources["resourceMemoryLimit"],
        ) == (size.resources["cpu"], size.cpu_limit, size.resources["memory"], size.memory_limit), name  # fmt: skip
        assert ("accelerator" in resources) is (size is cluster.GPU_STEP), name
        assert int(pod["activeDeadlineSeconds"]) == size.timeout_s, name
        for task in tasks:
            assert task["retryPolicy"]["backoffMaxDuration"] == size.retry["backoff_max_duration"], name
            assert task["retryPolicy"]["maxRetryCount"] == cluster.RETRIES, name
        assert pod["securityContext"] == {"runAsUser": "10001", "runAsGroup": "10001", "runAsNonRoot": True}
    assert {n.removeprefix("exec-").rstrip("-0123456789") for n in sizes["small"]} == {
        "data-version-op", "set-roles-op", "min-accuracy-op", "shard-indices-op"
    }  # fmt: skip
    assert len(sizes["gpu"]) == 7 and "exec-finetune-detector-job-op" in sizes["cpu"]  # the launcher waits on a CPU
    # the classes as documented in cluster.py: a bookkeeping step small and short, GPU steps as before
    assert cluster.GPU_STEP.resources == {"cpu": "8", "memory": "32G", "accelerators": 1}
    assert quantity(cluster.SMALL_STEP.resources["memory"]) < quantity(cluster.CPU_STEP.resources["memory"])
    assert cluster.SMALL_STEP.timeout_s < cluster.CPU_STEP.timeout_s == cluster.GPU_STEP.timeout_s
    assert cluster.SMALL_RETRY["backoff_max_duration"] == "21690s"  # 3 × (1 h + 1 h) + 30 s + 60 s


def test_the_check_finds_a_missing_limit_timeout_retry_user_or_home(compiled):
    container, pod, tasks = compiled["exec-train-classifier-op"]
    assert _problems("x", container, pod, tasks) == []
    for where, key, message in (
        ("resources", "resourceCpuLimit", "no resourceCpuLimit"),
        ("resources", "resourceMemoryLimit", "no resourceMemoryLimit"),
        ("pod", "activeDeadlineSeconds", "no timeout"),
        ("task", "retryPolicy", "no retry policy"),
        ("pod", "securityContext", "no non-root securityContext"),
        ("container", "env", "HOME is not"),
    ):
        broken = copy.deepcopy((container, pod, tasks))
        parts = {"resources": broken[0]["resources"], "container": broken[0], "pod": broken[1], "task": broken[2][0]}
        del parts[where][key]
        assert any(message in p for p in _problems("x", *broken)), key
    low = copy.deepcopy(container)
    low["resources"]["resourceCpuLimit"] = "1"  # below the 8 requested
    assert any("CPU limit below" in p for p in _problems("x", low, pod, tasks))


def test_home_and_the_s3_endpoint_reach_every_pod_from_the_secret_when_it_has_them(compiled, repo_root):
    for name, (container, pod, _) in compiled.items():
        assert {"name": "HOME", "value": "/tmp"} in container["env"], name
        secrets = {s["secretNameParameter"]["componentInputParameter"]: s for s in pod["secretAsEnv"]}
        s3 = secrets[next(k for k in secrets if k.endswith("s3_secret"))]
        assert s3["optional"] is True, name  # a secret or a key that is not there leaves the variable unset
        variables = {k["envVar"]: k["secretKey"] for k in s3["keyToEnv"]}
        for variable in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert variables.get(variable) == variable, (name, variable)
    # every key the example secrets hold reaches the pods under its own name
    examples = yaml.safe_load_all((repo_root / "deploy/kubernetes/secrets.example.yaml").read_text())
    by_name = {d["metadata"]["name"]: set(d["stringData"]) for d in examples if d}
    assert {"AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"} <= by_name[cluster.DEFAULTS.s3_secret]
    assert by_name[cluster.DEFAULTS.s3_secret] <= set(cluster.S3_SECRET_KEYS)
    assert by_name[cluster.DEFAULTS.mlflow_secret] <= set(cluster.MLFLOW_SECRET_KEYS)


def test_every_task_mounts_the_data_volume_and_kfp_kubernetes_cannot_make_it_read_only(compiled):
    for name, (_, pod, _) in compiled.items():
        mounts = {m["mountPath"]: m for m in pod["pvcMount"]}
        data = mounts[cluster.DATA_MOUNT]
        assert data["pvcNameParameter"]["componentInputParameter"].endswith("data_pvc"), name
        assert not [key for key in data if "read" in key.lower()], name
    # kfp-kubernetes 2.17 has no way to ask for a read-only mount: neither mount_pvc nor the PvcMount it compiles
    fields = {f.name for f in kubernetes_executor_config_pb2.PvcMount.DESCRIPTOR.fields}
    parameters = set(inspect.signature(kubernetes.mount_pvc).parameters)
    assert not [n for n in fields | parameters if "read" in n.lower()], (
        "kfp-kubernetes can mount a PVC read-only now: mount the data volume read-only in _Platform._common"
    )


def test_a_local_run_keeps_this_machines_home(tmp_path):
    """kfp.local passes a task's env to its process: HOME=/tmp, right in a pod, would be every user's folder here."""
    from kfp import compiler

    from image_emotion.kubeflow.images import images
    from image_emotion.kubeflow.pipeline import build_pipeline

    out = tmp_path / "local.yaml"
    compiler.Compiler().compile(build_pipeline(images(), home=None), str(out))
    spec, _ = yaml.safe_load_all(out.read_text())
    for name, executor in spec["deploymentSpec"]["executors"].items():
        assert "HOME" not in {e["name"] for e in executor["container"].get("env", [])}, name
    assert inspect.signature(build_pipeline).parameters["home"].default == cluster.HOME  # compile_pipeline's


def test_a_cluster_without_gpus_gets_every_step_on_cpu_with_its_limits(tmp_path):
    """``--gpu-type none`` (kind/k3d on a laptop): no step asks for an accelerator or tolerates the GPU taint, the
    steps that would take a GPU are sized as CPU steps, and nothing else of the pipeline changes."""
    spec, platform = yaml.safe_load_all(compile_pipeline(tmp_path / "cpu.yaml", gpu_type=cluster.NO_GPU).read_text())
    pods = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gpu_steps = [name for name in pods if _size(name) is cluster.GPU_STEP]
    assert len(gpu_steps) == 7
    for name in gpu_steps:
        resources = spec["deploymentSpec"]["executors"][name]["container"]["resources"]
        assert "accelerator" not in resources, name
        assert resources["resourceCpuRequest"] == cluster.CPU_STEP.resources["cpu"], name
        assert resources["resourceMemoryLimit"] == cluster.CPU_STEP.memory_limit, name
        assert "tolerations" not in pods[name] and "nodeSelector" not in pods[name], name
        assert int(pods[name]["activeDeadlineSeconds"]) == cluster.CPU_STEP.timeout_s, name
    gpu = next(yaml.safe_load_all(compile_pipeline(tmp_path / "gpu.yaml").read_text()))
    assert spec["root"]["inputDefinitions"] == gpu["root"]["inputDefinitions"]  # the same parameters to give
