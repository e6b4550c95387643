"""A Kubeflow training-operator ``PyTorchJob`` (``kubeflow.org/v1``) that runs one of the data-parallel trainings
(``training/distributed.py``) on ``workers`` pods of ``gpus_per_worker`` GPUs each, and ``run_training_job``, which
submits one and waits for it.

How the pieces meet (training-operator v1: ``pkg/apis/kubeflow.org/v1/pytorch_types.go``,
``pkg/controller.v1/pytorch/envvar.go``): the job has one ``Master`` pod and ``workers - 1`` ``Worker`` pods. In the
container named ``pytorch`` of each, the operator sets ``MASTER_ADDR``/``PET_MASTER_ADDR`` (the master pod's
service ``<job>-master-0``), ``MASTER_PORT``/``PET_MASTER_PORT`` (the container port named ``pytorchjob-port``),
``WORLD_SIZE`` (pods × ``spec.nprocPerNode``), ``RANK``/``PET_NODE_RANK`` (the pod's index, the master 0),
``PET_NNODES`` and ``PET_NPROC_PER_NODE``. The container runs ``torchrun --nnodes W --nproc-per-node G -m
image_emotion.cli <stage> ...``; torchrun reads the node rank and the master's address from the ``PET_*`` variables
(static rendezvous) and starts one process per GPU with its own ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``. No
``elasticPolicy``: the world size is fixed, so every run splits each global batch the same way.

Retries: ``restartPolicy: OnFailure`` restarts a failed pod (``runPolicy.backoffLimit`` times); a pod's failure
breaks the others' collectives, they fail and restart too, and every rank resumes from the checkpoint under
``WORK_MOUNT/checkpoints/<run id>/<stage>/last.pt`` (the layout of the kfp components) that rank 0 wrote. The run
id is also ``$IMAGE_EMOTION_PIPELINE_RUN``, so the job's MLflow runs land under the pipeline run's parent.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from image_emotion.errors import ConfigError, ImageEmotionError
from image_emotion.kubeflow.cluster import (
    CPU_RETRY,
    DATA_MOUNT,
    DEFAULTS,
    EPHEMERAL_STORAGE_REQUEST,
    GPU_STEP,
    HOME,
    MLFLOW_SECRET_KEYS,
    RUN_ID_ENV,
    S3_SECRET_KEYS,
    UID,
    WORK_MOUNT,
    ClusterDefaults,
)
from image_emotion.stages import paths as stage_paths

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
CONTAINER = "pytorch"  # the operator sets the environment of, and finds the port in, the container of this name
PORT_NAME, PORT = "pytorchjob-port", 23456  # the operator's defaults
PIPELINE_RUN_ENV = "IMAGE_EMOTION_PIPELINE_RUN"  # tracking/runs.py: the MLflow parent run
STAGES = {command: cls for command, cls in stage_paths.STAGES.items() if cls.distributed}  # data-parallel ones
BACKOFF_LIMIT = 2  # pod restarts before the job fails
# The job's deadline (runPolicy.activeDeadlineSeconds): as long as the launching step and all its retries may wait
# for it (a retried step follows the job already submitted), so a job whose step gave up stops holding its GPUs.
JOB_DEADLINE_S = int(CPU_RETRY["backoff_max_duration"].removesuffix("s"))
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,46}[a-z0-9])?$")  # DNS-1035 label with room for "-worker-NNN"
_RUN_ID = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")  # a path segment and a label value
_QUANTITY = re.compile(r"^(\d+)([A-Za-z]*)$")


class TrainingJobError(ImageEmotionError):
    """A PyTorchJob that could not be created, failed, or did not finish in time."""


def _scaled(quantity: str, factor: int) -> str:
    """A Kubernetes quantity times ``factor`` ("32G" × 2 = "64G")."""
    match = _QUANTITY.match(quantity)
    if match is None:
        raise ConfigError(f"resource quantity {quantity!r} is not <whole number><unit>, e.g. 32G")
    return f"{int(match.group(1)) * factor}{match.group(2)}"


def stage_arguments(stage: str, run_id: str, paths: Mapping[str, str] | None = None) -> list[str]:
    """The path options of ``stage`` (one per field of its ``*Paths`` dataclass, in order): ``paths`` where given;
    else the checkpoint at ``WORK_MOUNT/checkpoints/<run id>/<stage module>/last.pt``, the other outputs under
    ``WORK_MOUNT/outputs/<run id>/<stage module>/``, the inputs at the paths ``dvc.yaml`` uses (relative: they
    resolve in the working directory, the data volume)."""
    module = STAGES[stage].module
    fields = dataclasses.fields(STAGES[stage])
    given = dict(paths or {})
    unknown = sorted(set(given) - {f.name for f in fields})
    if unknown:
        raise ConfigError(f"{stage} has no path {unknown[0]!r}; its paths are {', '.join(f.name for f in fields)}")
    args = []
    for f in fields:
        default = Path(f.default)
        if stage_paths.role(f) == stage_paths.CHECKPOINT:
            default = Path(WORK_MOUNT) / "checkpoints" / run_id / module / "last.pt"
        elif stage_paths.role(f) in (stage_paths.OUT, stage_paths.METRIC):
            default = Path(WORK_MOUNT) / "outputs" / run_id / module / default.name
        args += ["--" + f.name.replace("_", "-"), str(given.get(f.name, default))]
    return args


def pytorch_job(
    name: str,
    stage: str,
    image: str,
    run_id: str,
    *,
    workers: int = 1,
    gpus_per_worker: int = 1,
    mlflow_tracking_uri: str,
    params: str = "params.yaml",
    overrides: Sequence[str] = (),
    paths: Mapping[str, str] | None = None,
    cluster: ClusterDefaults = DEFAULTS,
    backoff_limit: int = BACKOFF_LIMIT,
) -> dict[str, Any]:
    """The PyTorchJob manifest (a dict, as the API takes it) that runs ``image-emotion <stage>`` data-parallel on
    ``workers`` pods × ``gpus_per_worker`` GPUs from ``image`` (the CUDA image, ``kubeflow.images.images().cuda``).

    ``params`` (relative to the data volume, the working directory) and ``overrides`` (``key=value``, as ``--set``)
    give the config; ``paths`` the stage's path options (``stage_arguments``). ``mlflow_tracking_uri`` must outlive
    the pods (a server or a database). ``cluster`` names the volumes, secrets, GPU resource, tolerations and node
    selector, as for the pipeline's GPU steps."""
    if stage not in STAGES:
        raise ConfigError(f"{stage!r} does not train data-parallel; a PyTorchJob runs one of {', '.join(STAGES)}")
    if not _NAME.match(name):
        raise ConfigError(f"job name {name!r}: lower-case letters, digits and '-', starting with a letter, <= 48")
    if not _RUN_ID.match(run_id):
        raise ConfigError(f"run id {run_id!r}: letters, digits, '.', '_' and '-', <= 63 characters")
    if workers < 1 or gpus_per_worker < 1:
        raise ConfigError(f"workers and gpus_per_worker must be >= 1, got {workers} and {gpus_per_worker}")
    from image_emotion.kubeflow.runtime import check_tracking_uri

    check_tracking_uri(mlflow_tracking_uri)
    module = STAGES[stage].module
    command = [
        "torchrun", "--nnodes", str(workers), "--nproc-per-node", str(gpus_per_worker),
        "-m", "image_emotion.cli", stage, "--params", params,
        *(arg for override in overrides for arg in ("--set", override)),
        *stage_arguments(stage, run_id, paths),
    ]  # fmt: skip
    env: list[dict[str, Any]] = [
        {"name": PIPELINE_RUN_ENV, "value": run_id},
        {"name": RUN_ID_ENV, "value": run_id},
        {"name": "MLFLOW_TRACKING_URI", "value": mlflow_tracking_uri},
        {"name": "HOME", "value": HOME},  # writable under any uid (cluster.HOME)
    ]
    for secret, keys in ((cluster.mlflow_secret, MLFLOW_SECRET_KEYS), (cluster.s3_secret, S3_SECRET_KEYS)):
        env += [
            {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
            for key, variable in keys.items()
        ]
    # the pipeline's GPU size class for each GPU of a pod (cluster.GPU_STEP): its CPU and memory requests, a CPU
    # limit above the request, the memory limit at the request; and the ephemeral storage kfp cannot ask for
    memory = _scaled(str(GPU_STEP.resources["memory"]), gpus_per_worker)
    container = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "workingDir": DATA_MOUNT,  # relative dataset roots and weight paths resolve on the data volume
        "env": env,
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "resources": {
            "requests": {
                "cpu": _scaled(str(GPU_STEP.resources["cpu"]), gpus_per_worker),
                "memory": memory,
                "ephemeral-storage": EPHEMERAL_STORAGE_REQUEST,
            },
            "limits": {
                "cpu": _scaled(GPU_STEP.cpu_limit, gpus_per_worker),
                "memory": memory,
                cluster.gpu_type: str(gpus_per_worker),
            },
        },
        "volumeMounts": [
            # read-only: the job reads datasets and weights there; what it writes goes to the work volume
            {"name": "data", "mountPath": DATA_MOUNT, "readOnly": True},
            {"name": "work", "mountPath": WORK_MOUNT},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        # Pod Security "restricted" (deploy/kubernetes/namespace.yaml): no privilege escalation, no capabilities
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    pod: dict[str, Any] = {
        "containers": [container],
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": cluster.data_pvc}},
            {"name": "work", "persistentVolumeClaim": {"claimName": cluster.work_pvc}},
            {
                "name": "dshm",
                "emptyDir": {"medium": "Memory"},
            },  # NCCL's shared memory (the default 64 MiB is too small)
        ],
        "securityContext": {
            "runAsUser": UID,
            "runAsGroup": UID,
            "runAsNonRoot": True,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "tolerations": [dict(t) for t in cluster.gpu_tolerations],
    }
    if cluster.gpu_node_selector:
        pod["nodeSelector"] = dict(cluster.gpu_node_selector)
    labels = {"app.kubernetes.io/name": "image-emotion", "app.kubernetes.io/component": module.replace("_", "-")}

    def replicas(count: int) -> dict[str, Any]:
        return {
            "replicas": count,
            "restartPolicy": "OnFailure",
            "template": {
                "metadata": {"labels": dict(labels), "annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": copy.deepcopy(pod),
            },
        }

    specs = {"Master": replicas(1)}
    if workers > 1:
        specs["Worker"] = replicas(workers - 1)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "labels": {**labels, "image-emotion/run": run_id}},
        "spec": {
            "nprocPerNode": str(gpus_per_worker),
            "runPolicy": {
                "backoffLimit": backoff_limit,
                "cleanPodPolicy": "None",
                "activeDeadlineSeconds": JOB_DEADLINE_S,
            },
            "pytorchReplicaSpecs": specs,
        },
    }


def _custom_objects_api() -> Any:
    """The Kubernetes CustomObjectsApi: the pod's service account in a cluster, else ``$KUBECONFIG``/~/.kube."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError):
            raise TrainingJobError(
                "no Kubernetes cluster to submit the PyTorchJob to: run inside the cluster or point KUBECONFIG at one"
            ) from None
    return client.CustomObjectsApi()


def _finished(job: Mapping[str, Any]) -> tuple[str | None, str]:
    """("Succeeded" | "Failed" | None, the message of the latest condition) from the job's ``status.conditions``."""
    conditions = (job.get("status") or {}).get("conditions") or []
    for condition in reversed(conditions):
        if condition.get("type") in ("Succeeded", "Failed") and condition.get("status") == "True":
            return condition["type"], str(condition.get("message") or condition.get("reason") or "")
    last = conditions[-1] if conditions else {}
    return None, str(last.get("type") or "not started")


def run_training_job(
    manifest: Mapping[str, Any], namespace: str, timeout_s: float = 24 * 3600, poll_s: float = 30.0, api: Any = None
) -> dict[str, Any]:
    """Create the PyTorchJob ``manifest`` in ``namespace`` (or follow it when one of that name exists: a retried
    step) and poll its ``status.conditions`` every ``poll_s`` s until it succeeds (its last state is returned),
    fails or ``timeout_s`` pass (a ``TrainingJobError`` naming the job and what to do). ``api``: a
    ``kubernetes.client.CustomObjectsApi`` (default: the cluster's)."""
    from kubernetes.client.exceptions import ApiException

    api = api if api is not None else _custom_objects_api()
    name = manifest["metadata"]["name"]
    job_ref = f"PyTorchJob {namespace}/{name}"
    logs = f"kubectl logs -n {namespace} {name}-master-0"
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, dict(manifest))
    except ApiException as exc:
        if exc.status != 409:  # 409: it exists already (a retry of the step that submitted it): follow it
            reason = exc.reason or exc.status
            raise TrainingJobError(
                f"{job_ref} could not be created ({reason}); is the training operator installed "
                f"(kubectl get crd {PLURAL}.{GROUP}) and may this service account create {PLURAL}?"
            ) from None
    deadline = time.monotonic() + timeout_s
    state = "not started"
    while True:
        try:
            job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status is not None and exc.status < 500:
                raise TrainingJobError(
                    f"{job_ref} cannot be read ({exc.reason or exc.status}); was it deleted?"
                ) from None
            job = None  # the API server's trouble: ask again
        if job is not None:
            outcome, state = _finished(job)
            if outcome == "Succeeded":
                return dict(job)
            if outcome == "Failed":
                raise TrainingJobError(
                    f"{job_ref} failed: {state or 'no message'}; see `{logs}`, fix the cause and submit it again "
                    f"(delete it first: kubectl delete {PLURAL} -n {namespace} {name}); it resumes from its checkpoint"
                )
        if time.monotonic() >= deadline:
            raise TrainingJobError(
                f"{job_ref} not finished after {timeout_s:g} s (state: {state}); see `{logs}` and wait longer "
                f"(timeout_s) or stop it: kubectl delete {PLURAL} -n {namespace} {name}"
            )
        time.sleep(poll_s)
