"""A Kubeflow Trainer v2 ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``) that runs one of the data-parallel
trainings (``training/distributed.py``) on ``workers`` pods of ``gpus_per_worker`` GPUs each, and
``run_training_job``, which submits one for one attempt of a pipeline step, waits for it and cleans up after it.

The training operator's ``kubeflow.org/v1`` PyTorchJob, which this module built before, was removed upstream; no
code here builds one any more. The cluster needs Kubeflow Trainer v2.2.0 or newer (``spec.runtimePatches`` and
``spec.activeDeadlineSeconds`` are new in v2.2.0; the schema the tests check against is v2.3.0's,
``tests/data/trainer/``) with its default ``ClusterTrainingRuntime`` ``torch-distributed``, and RBAC for the
pipeline's service account: ``deploy/kubernetes/trainer-rbac.yaml``.

How the pieces meet (kubeflow/trainer v2.3.0: ``pkg/apis/trainer/v1alpha1/trainjob_types.go``,
``pkg/runtime/framework/plugins/torch/torch.go``, ``manifests/base/runtimes/torch_distributed.yaml``): the runtime
``torch-distributed`` is a JobSet template with one replicated job ``node`` whose pods run one container ``node``;
the controller makes a JobSet of ``spec.trainer.numNodes`` such pods, and the Torch plugin sets in container
``node`` ``PET_NNODES``, ``PET_NPROC_PER_NODE`` (``numProcPerNode``), ``PET_NODE_RANK`` (the pod's completion
index), ``PET_MASTER_ADDR`` (``<job>-node-0-0.<job>``: the first pod, through the JobSet's headless service) and
``PET_MASTER_PORT`` (29500). The container runs ``torchrun --nnodes W --nproc-per-node G -m image_emotion.cli
<stage> ...``; torchrun reads the node rank and the master's address from the ``PET_*`` variables (static
rendezvous) and starts one process per GPU with its own ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``. The world
size is fixed, so every run splits each global batch the same way.

What the TrainJob sets: ``spec.trainer`` (image, command, environment, nodes, processes and resources per node);
one ``spec.runtimePatches`` entry for the pods of ``node`` (the volumes, the container's mounts and security
context, the pod's security context, tolerations, node selector, labels and the Istio opt-out); the job's
deadline. Trainer's API has no working directory, so the command is ``sh -c 'cd "$0" && exec "$@"' DATA_MOUNT``
followed by the torchrun command: relative dataset roots and weight paths resolve on the data volume as in every
other step.

One TrainJob per attempt of the launching step (``for_attempt``): its name is the run's base name and a suffix
from the launcher pod's uid (a kfp retry is a new pod, so a new job, which resumes from the checkpoint under
``WORK_MOUNT/checkpoints/<run id>/<stage>/last.pt`` that rank 0 of the previous one wrote), and it is owned by the
launcher pod (an ownerReference, ``blockOwnerDeletion: false``), so deleting the run's pods garbage-collects it.
``run_training_job`` deletes a job that did not complete however the launcher leaves (failure, timeout, the run
stopped: SIGTERM), after printing the last lines of its pods' logs for a failure or a timeout;
``spec.activeDeadlineSeconds`` stops a job whose launcher was killed before it could. The run id is also
``$IMAGE_EMOTION_PIPELINE_RUN``, so the job's MLflow runs land under the pipeline run's parent.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from image_emotion.errors import ConfigError, ImageEmotionError
from image_emotion.kubeflow.cluster import (
    CPU_STEP,
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

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
RUNTIME, RUNTIME_KIND = "torch-distributed", "ClusterTrainingRuntime"  # Trainer's default runtime for torchrun
NODE = "node"  # the runtime's replicated job and its container, where the Torch plugin sets the PET_* variables
MANAGER = "image-emotion/launcher"  # who owns the runtime patch (Trainer wants a domain-prefixed path)
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"  # on every pod of the job's JobSet, named as the TrainJob
PIPELINE_RUN_ENV = "IMAGE_EMOTION_PIPELINE_RUN"  # tracking/runs.py: the MLflow parent run
# The launcher pod's name, uid and namespace (the downward API: the pipeline sets them on the launching step with
# kfp-kubernetes' use_field_path_as_env): the job's name suffix and its owner
POD_NAME_ENV, POD_UID_ENV, POD_NAMESPACE_ENV = "POD_NAME", "POD_UID", "POD_NAMESPACE"
LAUNCHER_FIELDS = {POD_NAME_ENV: "metadata.name", POD_UID_ENV: "metadata.uid", POD_NAMESPACE_ENV: "metadata.namespace"}
STAGES = {command: cls for command, cls in stage_paths.STAGES.items() if cls.distributed}  # data-parallel ones
# How long one job may run (its activeDeadlineSeconds) and its launcher waits: one attempt of the launching step
# (cluster.CPU_STEP's timeout, its pod's deadline) less the time to copy the inputs in before and to clean up
# after, so the launcher, not the kubelet, ends an attempt that runs out of time, and deletes its job
CLEANUP_MARGIN_S = 1800
JOB_DEADLINE_S = CPU_STEP.timeout_s - CLEANUP_MARGIN_S
LOG_LINES = 100  # of each pod of a job that failed or timed out, printed before the job is deleted
# DNS-1035 labels: the Trainer refuses other names, and a pod's hostname, "<name>-node-0-<index>", must be one too
# (<= 63 characters, for up to 1000 nodes)
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,50}[a-z0-9])?$")  # <= 52
_BASE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,41}[a-z0-9])?$")  # <= 43, room for for_attempt's "-xxxxxxxx"
_RUN_ID = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")  # a path segment and a label value
_QUANTITY = re.compile(r"^(\d+)([A-Za-z]*)$")


class TrainingJobError(ImageEmotionError):
    """A TrainJob that could not be created, failed, did not finish in time, or whose step was stopped."""


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


def train_job(
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
    runtime: str = RUNTIME,
    deadline_s: int = JOB_DEADLINE_S,
) -> dict[str, Any]:
    """The TrainJob manifest (a dict, as the API takes it) that runs ``image-emotion <stage>`` data-parallel on
    ``workers`` pods × ``gpus_per_worker`` GPUs from ``image`` (the CUDA image, ``kubeflow.images.images().cuda``)
    with the ClusterTrainingRuntime ``runtime`` (a torchrun runtime: one replicated job and container ``node``).

    ``params`` (relative to the data volume, the working directory) and ``overrides`` (``key=value``, as ``--set``)
    give the config; ``paths`` the stage's path options (``stage_arguments``). ``mlflow_tracking_uri`` must outlive
    the pods (a server or a database). ``cluster`` names the volumes, secrets, GPU resource, tolerations and node
    selector, as for the pipeline's GPU steps. ``deadline_s``: the job's ``activeDeadlineSeconds``."""
    if stage not in STAGES:
        raise ConfigError(f"{stage!r} does not train data-parallel; a TrainJob runs one of {', '.join(STAGES)}")
    if not _NAME.match(name):
        raise ConfigError(f"job name {name!r}: lower-case letters, digits and '-', starting with a letter, <= 52")
    if not _RUN_ID.match(run_id):
        raise ConfigError(f"run id {run_id!r}: letters, digits, '.', '_' and '-', <= 63 characters")
    if workers < 1 or gpus_per_worker < 1:
        raise ConfigError(f"workers and gpus_per_worker must be >= 1, got {workers} and {gpus_per_worker}")
    from image_emotion.kubeflow.runtime import check_tracking_uri

    check_tracking_uri(mlflow_tracking_uri)
    module = STAGES[stage].module
    torchrun = [
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
    resources = {
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
    }
    container = {  # merged into the runtime's container "node" (Trainer sets its env from spec.trainer only)
        "name": NODE,
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
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": cluster.data_pvc}},
            {"name": "work", "persistentVolumeClaim": {"claimName": cluster.work_pvc}},
            {
                "name": "dshm",
                "emptyDir": {"medium": "Memory"},
            },  # NCCL's shared memory (the default 64 MiB is too small)
        ],
        "containers": [container],
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
    # an Istio sidecar (a Kubeflow profile's namespace injects one) would sit between torchrun's ranks
    template = {"metadata": {"labels": dict(labels), "annotations": {"sidecar.istio.io/inject": "false"}}, "spec": pod}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "labels": {**labels, "image-emotion/run": run_id}},
        "spec": {
            "runtimeRef": {"name": runtime, "apiGroup": GROUP, "kind": RUNTIME_KIND},
            "trainer": {
                "image": image,
                "command": ["/bin/sh", "-c", 'cd "$0" && exec "$@"', DATA_MOUNT],  # the working directory
                "args": torchrun,
                "env": env,
                "numNodes": workers,
                "numProcPerNode": gpus_per_worker,
                "resourcesPerNode": resources,
            },
            "runtimePatches": [
                {
                    "manager": MANAGER,
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {"replicatedJobs": [{"name": NODE, "template": {"spec": {"template": template}}}]}
                        }
                    },
                }
            ],
            "activeDeadlineSeconds": deadline_s,
        },
    }


def node_pod_template(job: Mapping[str, Any]) -> dict[str, Any]:
    """The pod template (a core/v1 PodTemplateSpec) of ``job``'s nodes as the runtime renders it from its own
    template (one container ``node``) and ``job``: the runtime patch's pod fields and metadata, the container
    ``node`` with the trainer's image, command, args, environment and resources and the patch's mounts and
    security context. For offline checks (the Kubernetes schema, Pod Security); the Torch plugin's ``PET_*``
    variables and port are left out."""
    trainer = job["spec"]["trainer"]
    (patch,) = [p for p in job["spec"]["runtimePatches"] if p["manager"] == MANAGER]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    template = copy.deepcopy(replicated["template"]["spec"]["template"])
    (container,) = template["spec"].pop("containers")
    fields = {"image": "image", "command": "command", "args": "args", "env": "env", "resources": "resourcesPerNode"}
    template["spec"]["containers"] = [{**container, **{k: copy.deepcopy(trainer[v]) for k, v in fields.items()}}]
    return template


@dataclasses.dataclass(frozen=True)
class LauncherPod:
    """The pod that launches a TrainJob and waits for it (``POD_*`` variables, the downward API)."""

    name: str
    uid: str
    namespace: str


def launcher_pod(environ: Mapping[str, str] | None = None) -> LauncherPod | None:
    """This pod, from ``POD_NAME``, ``POD_UID`` and ``POD_NAMESPACE`` (``environ``, default ``os.environ``);
    ``None`` where one is unset (a pipeline compiled without them, a local run)."""
    environ = os.environ if environ is None else environ
    name, uid, namespace = (environ.get(key, "") for key in (POD_NAME_ENV, POD_UID_ENV, POD_NAMESPACE_ENV))
    return LauncherPod(name, uid, namespace) if name and uid and namespace else None


def for_attempt(manifest: Mapping[str, Any], namespace: str, launcher: LauncherPod | None) -> dict[str, Any]:
    """``manifest`` for this attempt of its launching step: named ``<its name>-<8 hex digits of the launcher pod's
    uid>`` (a random suffix without a launcher), so a retried step, a new pod, submits a new job; and owned by the
    launcher where it is in ``namespace`` (an owner must be in its dependent's namespace), so deleting the run's
    pods garbage-collects the job. ``blockOwnerDeletion: false``: the pod's deletion never waits for the job's,
    and setting it needs no permission on the pod (true would need ``update`` of ``pods/finalizers``)."""
    base = manifest["metadata"]["name"]
    if not _BASE_NAME.match(base):
        raise ConfigError(f"job name {base!r}: lower-case letters, digits and '-', starting with a letter, <= 43")
    seed = launcher.uid if launcher is not None else secrets.token_hex(16)
    job = copy.deepcopy(dict(manifest))
    job["metadata"]["name"] = f"{base}-{hashlib.sha256(seed.encode()).hexdigest()[:8]}"
    if launcher is not None and launcher.namespace == namespace:
        job["metadata"]["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": launcher.name,
                "uid": launcher.uid,
                "controller": False,
                "blockOwnerDeletion": False,
            }
        ]
    return job


def _clients() -> tuple[Any, Any]:
    """The Kubernetes CustomObjectsApi and CoreV1Api: the pod's service account in a cluster, else
    ``$KUBECONFIG``/~/.kube."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError):
            raise TrainingJobError(
                "no Kubernetes cluster to submit the TrainJob to: run inside the cluster or point KUBECONFIG at one"
            ) from None
    return client.CustomObjectsApi(), client.CoreV1Api()


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _api_message(exc: Any) -> str:
    """The API server's message of an ApiException (a webhook's or the schema's refusal), else its reason."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return _one_line(message or exc.reason or exc.status)


def _finished(job: Mapping[str, Any]) -> tuple[str | None, str]:
    """("Complete" | "Failed" | None, the message of that condition, else the latest condition's type) from the
    job's ``status.conditions`` (Trainer v2's TrainJobComplete and TrainJobFailed)."""
    conditions = (job.get("status") or {}).get("conditions") or []
    for condition in conditions:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"], _one_line(condition.get("message") or condition.get("reason") or "")
    last = conditions[-1] if conditions else {}
    return None, str(last.get("type") or "no condition yet")


class _JobEnded(TrainingJobError):
    """The job failed or ran out of time: its pods' logs are worth printing before it is deleted."""


@contextlib.contextmanager
def _sigterm_raises(job_ref: str) -> Iterator[None]:
    """SIGTERM (the run stopped, the pod's deadline) raises a TrainingJobError in the main thread, so the
    launcher's cleanup runs; a second one is ignored while it does (the kubelet's SIGKILL still ends it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise TrainingJobError(f"{job_ref}: this step was stopped (SIGTERM) while the job ran; the job is deleted")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_logs(core: Any, namespace: str, name: str, lines: int = LOG_LINES) -> None:
    """The last ``lines`` lines of the container ``node`` of each pod of job ``name`` (its JobSet's label), on
    stderr: the step's log keeps them after the job and its pods are deleted. Best effort: a failure is a line."""
    try:
        pods = core.list_namespaced_pod(namespace, label_selector=f"{JOBSET_LABEL}={name}", _request_timeout=30)
        for pod in pods.items:
            log = core.read_namespaced_pod_log(
                pod.metadata.name, namespace, container=NODE, tail_lines=lines, _request_timeout=30
            )
            print(f"----- the last {lines} lines of {pod.metadata.name} -----\n{log}", file=sys.stderr, flush=True)
    except Exception as exc:  # the logs only help: their absence must not hide the outcome
        print(f"(the logs of TrainJob {namespace}/{name} could not be read: {_one_line(exc)})", file=sys.stderr)


def _delete(api: Any, namespace: str, name: str) -> None:
    """Delete job ``name`` and, through its JobSet, its pods (background propagation). Best effort: an error is
    a line that says how to delete it by hand, never an exception hiding why the launcher is leaving."""
    from kubernetes.client.exceptions import ApiException

    command = f"kubectl delete {PLURAL}.{GROUP} -n {namespace} {name}"
    try:
        api.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background", _request_timeout=30
        )
        print(f"deleted TrainJob {namespace}/{name}, which did not complete", file=sys.stderr, flush=True)
    except ApiException as exc:
        if exc.status != 404:  # 404: gone already
            print(f"could not delete TrainJob {namespace}/{name} ({_api_message(exc)}): {command}", file=sys.stderr)
    except Exception as exc:  # a lost connection too: see above
        print(f"could not delete TrainJob {namespace}/{name} ({_one_line(exc)}): {command}", file=sys.stderr)


def run_training_job(
    manifest: Mapping[str, Any],
    namespace: str,
    timeout_s: float = JOB_DEADLINE_S,
    poll_s: float = 30.0,
    api: Any = None,
    core: Any = None,
) -> dict[str, Any]:
    """Create the TrainJob ``manifest`` in ``namespace`` (strict field validation: an unknown field is refused,
    not dropped) and poll its ``status.conditions`` every ``poll_s`` s until it completes (its last state is
    returned), fails or ``timeout_s`` pass: a one-line ``TrainingJobError`` naming the job. A job that did not
    complete is deleted on the way out, whatever the way (failure, timeout, an API error, SIGTERM); for a failure
    or a timeout the last lines of its pods' logs are printed first. ``api``: a ``CustomObjectsApi``, ``core``: a
    ``CoreV1Api`` (the logs; none: not printed); both default to the cluster's."""
    from kubernetes.client.exceptions import ApiException

    if api is None:
        api, core = _clients()
    name = manifest["metadata"]["name"]
    job_ref = f"TrainJob {namespace}/{name}"
    created = complete = False
    with _sigterm_raises(job_ref):
        try:
            try:
                api.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, dict(manifest), field_validation="Strict"
                )
            except ApiException as exc:
                if exc.status != 409:  # 409: this attempt's own job (its name is this pod's): follow it
                    raise TrainingJobError(
                        f"{job_ref} could not be created ({_api_message(exc)}); is Kubeflow Trainer >= v2.2 installed "
                        f"(kubectl get crd {PLURAL}.{GROUP}) with the ClusterTrainingRuntime "
                        f"{manifest['spec']['runtimeRef']['name']}, and may this service account create {PLURAL} "
                        "(deploy/kubernetes/trainer-rbac.yaml)?"
                    ) from None
            created = True
            job = _follow(api, namespace, name, job_ref, timeout_s, poll_s)
            complete = True
            return job
        except _JobEnded:
            if core is not None:
                _print_logs(core, namespace, name)
            raise
        finally:
            if created and not complete:
                _delete(api, namespace, name)


def _follow(api: Any, namespace: str, name: str, job_ref: str, timeout_s: float, poll_s: float) -> dict[str, Any]:
    """Poll job ``name`` until it completes (returned), fails or ``timeout_s`` pass (``_JobEnded``)."""
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout_s
    state = "no condition yet"
    again = "retry the step: a new TrainJob resumes from the run's checkpoint"
    while True:
        try:
            job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status is not None and exc.status < 500:
                raise TrainingJobError(f"{job_ref} cannot be read ({_api_message(exc)}); was it deleted?") from None
            job = None  # the API server's trouble: ask again
        if job is not None:
            outcome, state = _finished(job)
            if outcome == "Complete":
                return dict(job)
            if outcome == "Failed":
                raise _JobEnded(
                    f"{job_ref} failed: {state or 'no message'}; its pods' last log lines are above; fix the cause "
                    f"and {again}"
                )
        if time.monotonic() >= deadline:
            raise _JobEnded(
                f"{job_ref} not finished after {timeout_s:g} s (state: {state}), deleted; its pods' last log lines "
                f"are above; {again}"
            )
        time.sleep(poll_s)
