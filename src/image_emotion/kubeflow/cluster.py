"""What the pipeline asks of a Kubernetes cluster, with its defaults in one place.

Run-time settings are pipeline parameters (a platform engineer sets them per run or in a recurring run);
compile-time ones (the registry; ParallelFor's limit: kfp takes only an int there; the accelerator resource:
kfp 2.17 does not pass a parameter given to ``set_accelerator_type`` into a ParallelFor) are options of
``image-emotion compile-pipeline``. ``deploy/kubernetes/`` holds the volumes and secrets these defaults name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from image_emotion.kubeflow.images import DEFAULT_REGISTRY

DATA_MOUNT = "/mnt/image-emotion/data"  # every pod: relative dataset roots and weight paths resolve here
WORK_MOUNT = "/mnt/image-emotion/work"  # training pods: checkpoints under <run id>/<step>/ survive a retry
RUN_ID_ENV = "IMAGE_EMOTION_KFP_RUN"  # the kfp run id, from the pod's `pipeline/runid` label (not an input:
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"  # an input would enter every cache key and caching never hits)
UID = 10001  # the images' numeric user and group (runAsNonRoot)
JOBS_DIR = "jobs"  # WORK_MOUNT/jobs/<run id>/<step>/{in,out}: what a step hands a TrainJob and gets back
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"  # the pod's own namespace

# The requests of each size class of steps (what the scheduler reserves on a node; ``StepSize`` below adds the
# limits and the timeout). A limit caps what a step may take beyond its request: CPU is compressible, so its limit
# is above the request (a step may use a core the node has idle, and is throttled, never killed, at the limit);
# memory is not, so its limit is the request (a step never counts on memory the node may not have: at the limit it
# is OOM-killed, a failure the retry policy retries, rather than the node under pressure evicting its neighbours).
# GPU steps (training, extraction): 8 cores feed one GPU (decoding and augmenting images in the loader workers),
# 32G hold the model, a dataset's manifest and the workers' prefetched batches.
GPU_RESOURCES = {"cpu": "8", "memory": "32G", "accelerators": 1}
# CPU steps that run a stage (prepare, merge_features, transfer_cv, evaluate, retrieve, report, register, the
# TrainJob launcher): they fit small heads on cached features, read and write a feature cache's shards, draw
# figures and copy files, none trains a network on images, so 2 cores; 8G for the arrays of a FI-sized set.
CPU_RESOURCES = {"cpu": "2", "memory": "8G", "accelerators": 0}
# Bookkeeping steps (a role's data version, the set names and the threshold read from the params, the shard
# indices): they load the params and return a value; kfp's executor and the package's config take ~100 MB of RSS
# and under a second of CPU, so a quarter core and 512M (five times that) are plenty.
SMALL_RESOURCES = {"cpu": "250m", "memory": "512M", "accelerators": 0}
# The ephemeral storage (the container's writable layer, /tmp, and kfp's artifact folders /minio, /s3, /gcs) a pod
# needs at least: kfp 2.17 cannot ask for it per step (its ResourceSpec has CPU, memory and accelerators only), so
# the namespace's LimitRange (deploy/kubernetes/namespace.yaml) gives every container this request by default, and
# the TrainJob's pods ask for it themselves.
EPHEMERAL_STORAGE_REQUEST = "2Gi"
# HOME of every pod: a folder any uid may write (/tmp is 1777 in the images), where torch, matplotlib and MLflow
# keep caches and config. The images' /home/emotion is uid 10001's alone, and a uid the image does not know (an
# admin's default run-as user, OpenShift's random uid) would get HOME=/, which no user may write.
HOME = "/tmp"

# every step is retried on transient failures (a failed container: an exception, an OOM kill, an eviction):
# kfp's retry policy, as ``task.set_retry(**GPU_RETRY)``; the wait doubles each time (kfp's default factor): 60 s,
# 120 s on a GPU, 30 s, 60 s on a CPU. A pod that is deleted (a lost or drained node) ends in Argo's Error phase,
# which Argo's default retryPolicy (OnFailure) does not retry and kfp cannot change: docs/kubeflow.md, "Retries".
RETRIES = 2
# One attempt of a step may run this long (the pod's activeDeadlineSeconds): a hung data loader or collective
# ends instead of holding a GPU for good. FI-sized GPU steps take a few hours (docs/scaling.md: a million images
# ≈ 1-4 GPU-hours a step), so a day is far above any planned attempt.
ATTEMPT_TIMEOUT_S = 24 * 3600
# Argo counts backoff.maxDuration from the start of the FIRST attempt and gives a retried pod only what is left
# of it as its deadline (workflow/controller/operator.go, processNodeRetries); kfp's default, 3600 s, thus meant
# that a step failing after an hour was never retried and a retry after 50 min was killed 10 min later. The max
# duration is therefore every attempt at its own timeout, plus time to schedule each pod (a GPU node scaled up,
# the image pulled: pending time counts for Argo, not for the pod's deadline), plus the waits between them.
PENDING_ALLOWANCE_S = 3600


def retry_policy(backoff_s: int, factor: float = 2.0, attempt_timeout_s: int = ATTEMPT_TIMEOUT_S) -> dict[str, Any]:
    """``task.set_retry`` keyword arguments: ``RETRIES`` retries, the first after ``backoff_s`` seconds, each next
    wait ``factor`` times longer, and a backoff max duration that never cuts an attempt of ``attempt_timeout_s``
    (its pod's deadline) short (see above)."""
    waits = sum(backoff_s * factor**i for i in range(RETRIES))
    longest = (RETRIES + 1) * (attempt_timeout_s + PENDING_ALLOWANCE_S) + waits
    return {
        "num_retries": RETRIES,
        "backoff_duration": f"{backoff_s}s",
        "backoff_factor": factor,
        "backoff_max_duration": f"{int(longest)}s",
    }


GPU_RETRY = retry_policy(60)  # backoff max duration 270180 s (75 h): 3 attempts of 24 h + 1 h, waits 60 + 120 s
CPU_RETRY = retry_policy(30)
# A bookkeeping step runs in seconds: an hour per attempt covers pulling the CPU image (it counts, the pod has
# started) and a slow API server, and a hung one frees its slot of the run in an hour rather than a day.
SMALL_TIMEOUT_S = 3600
SMALL_RETRY = retry_policy(30, attempt_timeout_s=SMALL_TIMEOUT_S)


@dataclass(frozen=True)
class StepSize:
    """One size class of the pipeline's steps: its requests (``resources``: CPU, memory, accelerators), its CPU
    limit, its memory limit (the memory request, see above), one attempt's timeout and the retry policy whose max
    duration is sized from that timeout (``retry_policy``)."""

    name: str
    resources: dict[str, Any]
    cpu_limit: str
    timeout_s: int
    retry: dict[str, Any]

    @property
    def memory_limit(self) -> str:
        return str(self.resources["memory"])


# the CPU limit twice the request (bursts: a loader's start, an evaluation's figures); a bookkeeping step may burst
# to a core while Python imports the package
GPU_STEP = StepSize("gpu", GPU_RESOURCES, cpu_limit="16", timeout_s=ATTEMPT_TIMEOUT_S, retry=GPU_RETRY)
CPU_STEP = StepSize("cpu", CPU_RESOURCES, cpu_limit="4", timeout_s=ATTEMPT_TIMEOUT_S, retry=CPU_RETRY)
SMALL_STEP = StepSize("small", SMALL_RESOURCES, cpu_limit="1", timeout_s=SMALL_TIMEOUT_S, retry=SMALL_RETRY)
STEP_SIZES = (GPU_STEP, CPU_STEP, SMALL_STEP)

# The one-off Job that makes the volumes writable for UID (kfp-kubernetes cannot set a pod's fsGroup, and a
# fresh volume is root's): a step that finds the work volume read-only names it (runtime.check_work_volume)
PERMISSIONS_MANIFEST = "deploy/kubernetes/volume-permissions.yaml"
PERMISSIONS_JOB = "image-emotion-volume-permissions"

# secret key -> environment variable; every key optional (an MLflow server without auth needs none)
MLFLOW_SECRET_KEYS = {k: k for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")}
# AWS_ENDPOINT_URL: boto3's endpoint (MinIO, another S3), MLFLOW_S3_ENDPOINT_URL: the same as MLflow reads it
S3_SECRET_KEYS = {
    k: k
    for k in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"
    )
}  # fmt: skip


def _gpu_taint() -> list[dict[str, Any]]:
    return [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


@dataclass(frozen=True)
class ClusterDefaults:
    """The defaults of the pipeline's cluster parameters (run time) and compile options."""

    data_pvc: str = "image-emotion-data"  # datasets and weights (ReadOnlyMany / ReadWriteMany)
    work_pvc: str = "image-emotion-work"  # checkpoints (ReadWriteMany, or ReadWriteOnce on one GPU node)
    mlflow_secret: str = "image-emotion-mlflow"
    s3_secret: str = "image-emotion-s3"
    gpu_tolerations: list[dict[str, Any]] = field(default_factory=_gpu_taint)  # the usual GPU node taint
    gpu_node_selector: dict[str, str] = field(default_factory=dict)  # e.g. {"nvidia.com/gpu.product": "..."}
    registry: str = DEFAULT_REGISTRY  # compile time
    gpu_type: str = "nvidia.com/gpu"  # compile time: the accelerator resource (e.g. amd.com/gpu), or NO_GPU
    parallelism: int = 4  # compile time: pods of one ParallelFor at once (0: all)
    extraction_shards: int = 1  # GPU pods that split the main set's region extraction (`extract-regions --shard`)
    workers: int = 1  # pods of the detector's fine-tuning; > 1: a Trainer v2 TrainJob (kubeflow/trainjob.py) runs it
    gpus_per_worker: int = 1  # GPUs of each of those pods when ``workers`` > 1


DEFAULTS = ClusterDefaults()
NO_GPU = "none"  # gpu_type of a cluster without GPUs (kind/k3d): the GPU steps run on CPU as CPU steps
