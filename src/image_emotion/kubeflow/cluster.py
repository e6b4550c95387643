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

# every step is retried on transient failures (a lost node, a preempted pod): kfp's retry policy, as
# ``task.set_retry(**GPU_RETRY)``; the wait doubles each time (kfp's default factor): 60 s, 120 s on a GPU, 30 s,
# 60 s on a CPU
RETRIES = 2
GPU_RETRY = {"num_retries": RETRIES, "backoff_duration": "60s", "backoff_factor": 2.0}
CPU_RETRY = {"num_retries": RETRIES, "backoff_duration": "30s"}

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
