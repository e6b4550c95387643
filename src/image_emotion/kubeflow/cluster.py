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
JOBS_DIR = "jobs"  # WORK_MOUNT/jobs/<run id>/<step>/{in,out}: what a step hands a PyTorchJob and gets back
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"  # the pod's own namespace

# the requests of a step (what the kubelet reserves; GPU steps also get their memory as the limit)
GPU_RESOURCES = {"cpu": "8", "memory": "32G", "accelerators": 1}
CPU_RESOURCES = {"cpu": "2", "memory": "8G", "accelerators": 0}

# every step is retried on transient failures (a failed container: an exception, an OOM kill, an eviction):
# kfp's retry policy, as ``task.set_retry(**GPU_RETRY)``; the wait doubles each time (kfp's default factor): 60 s,
# 120 s on a GPU, 30 s, 60 s on a CPU. A pod that is deleted (a lost or drained node) ends in Argo's Error phase,
# which Argo's default retryPolicy (OnFailure) does not retry and kfp cannot change: README, "Retries".
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


def retry_policy(backoff_s: int, factor: float = 2.0) -> dict[str, Any]:
    """``task.set_retry`` keyword arguments: ``RETRIES`` retries, the first after ``backoff_s`` seconds, each next
    wait ``factor`` times longer, and a backoff max duration that never cuts an attempt short (see above)."""
    waits = sum(backoff_s * factor**i for i in range(RETRIES))
    longest = (RETRIES + 1) * (ATTEMPT_TIMEOUT_S + PENDING_ALLOWANCE_S) + waits
    return {
        "num_retries": RETRIES,
        "backoff_duration": f"{backoff_s}s",
        "backoff_factor": factor,
        "backoff_max_duration": f"{int(longest)}s",
    }


GPU_RETRY = retry_policy(60)  # backoff max duration 270180 s (75 h): 3 attempts of 24 h + 1 h, waits 60 + 120 s
CPU_RETRY = retry_policy(30)

# The one-off Job that makes the volumes writable for UID (kfp-kubernetes cannot set a pod's fsGroup, and a
# fresh volume is root's): a step that finds the work volume read-only names it (runtime.check_work_volume)
PERMISSIONS_MANIFEST = "deploy/kubernetes/volume-permissions.yaml"
PERMISSIONS_JOB = "image-emotion-volume-permissions"

# secret key -> environment variable; every key optional (an MLflow server without auth needs none)
MLFLOW_SECRET_KEYS = {k: k for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")}
S3_SECRET_KEYS = {
    k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL")
}


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
    gpu_type: str = "nvidia.com/gpu"  # compile time: the accelerator resource (e.g. amd.com/gpu)
    parallelism: int = 4  # compile time: pods of one ParallelFor at once (0: all)
    extraction_shards: int = 1  # GPU pods that split the main set's region extraction (`extract-regions --shard`)
    workers: int = 1  # pods of the detector's fine-tuning; > 1: a PyTorchJob (kubeflow/trainjob.py) runs it
    gpus_per_worker: int = 1  # GPUs of each of those pods when ``workers`` > 1


DEFAULTS = ClusterDefaults()
