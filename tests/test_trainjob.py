"""The PyTorchJob of ``kubeflow/trainjob.py``: its manifest field by field against values worked out by hand, valid
against the PyTorchJob CRD's schema (``tests/data/pytorchjob_v1_schema.json``, vendored from the training-operator,
unknown fields refused as the API server's strict field validation does), and ``run_training_job`` against an
in-process fake of the CustomObjectsApi: success, failure (its message in the error), timeout, a job that exists."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from kubernetes.client.exceptions import ApiException

from image_emotion.errors import ConfigError
from image_emotion.kubeflow.cluster import ClusterDefaults
from image_emotion.kubeflow.trainjob import TrainingJobError, pytorch_job, run_training_job, stage_arguments

SCHEMA = json.loads((Path(__file__).parent / "data" / "pytorchjob_v1_schema.json").read_text())
IMAGE = "registry.example/image-emotion:0.1.0-abc-cuda"
WORK, DATA = "/mnt/image-emotion/work", "/mnt/image-emotion/data"


def _strict(schema):
    """``schema`` with unknown properties refused wherever it names the properties (strict field validation)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    return [_strict(v) for v in schema] if isinstance(schema, list) else schema


VALIDATOR = jsonschema.Draft7Validator(_strict({k: v for k, v in SCHEMA.items() if k != "$comment"}))


def _errors(manifest) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(manifest)]


def test_metric_job_on_three_pods_of_two_gpus_field_by_field():
    cluster = ClusterDefaults(gpu_node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
    job = pytorch_job(
        "metric-run-7", "train-metric", IMAGE, "run-7", workers=3, gpus_per_worker=2,
        mlflow_tracking_uri="http://mlflow.mlops:5000", overrides=["metric.epochs=100"], cluster=cluster,
    )  # fmt: skip
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert job["metadata"] == {
        "name": "metric-run-7",
        "labels": {
            "app.kubernetes.io/name": "image-emotion",
            "app.kubernetes.io/component": "train-metric",
            "image-emotion/run": "run-7",
        },
    }
    spec = job["spec"]
    assert spec["nprocPerNode"] == "2"  # a string in the CRD ("auto", "gpu" or a number)
    # the job ends when its launching step and all its retries could no longer wait for it (cluster.CPU_RETRY)
    assert spec["runPolicy"] == {"backoffLimit": 2, "cleanPodPolicy": "None", "activeDeadlineSeconds": 270090}
    assert sorted(spec["pytorchReplicaSpecs"]) == ["Master", "Worker"]
    master, worker = spec["pytorchReplicaSpecs"]["Master"], spec["pytorchReplicaSpecs"]["Worker"]
    assert (master["replicas"], worker["replicas"]) == (1, 2)  # 3 pods: the master and two workers
    assert master["restartPolicy"] == worker["restartPolicy"] == "OnFailure"
    assert master["template"] == worker["template"]
    template = master["template"]
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    pod = template["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "pytorch" and container["image"] == IMAGE
    out = f"{WORK}/outputs/run-7/train_metric"
    assert container["command"] == [
        "torchrun", "--nnodes", "3", "--nproc-per-node", "2", "-m", "image_emotion.cli", "train-metric",
        "--params", "params.yaml", "--set", "metric.epochs=100",
        "--prepared", "data/prepared/main", "--out-dir", f"{out}/metric", "--metrics", f"{out}/metric.json",
        "--ablation", f"{out}/metric_ablation.json",
    ]  # fmt: skip
    assert container["workingDir"] == DATA
    assert container["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}]
    # 8 CPUs (up to 16) and 32G a GPU (cluster.GPU_STEP), two GPUs; the ephemeral storage kfp cannot ask for
    assert container["resources"] == {
        "requests": {"cpu": "16", "memory": "64G", "ephemeral-storage": "2Gi"},
        "limits": {"cpu": "32", "memory": "64G", "nvidia.com/gpu": "2"},
    }
    env = {e["name"]: e for e in container["env"]}
    assert env["IMAGE_EMOTION_PIPELINE_RUN"] == {"name": "IMAGE_EMOTION_PIPELINE_RUN", "value": "run-7"}
    assert env["IMAGE_EMOTION_KFP_RUN"]["value"] == "run-7"
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.mlops:5000"
    assert env["HOME"] == {"name": "HOME", "value": "/tmp"}  # writable under any uid
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert secrets == {
        **{
            k: {"name": "image-emotion-mlflow", "key": k, "optional": True}
            for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
        },
        **{
            k: {"name": "image-emotion-s3", "key": k, "optional": True}
            for k in (
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_DEFAULT_REGION",
                "AWS_ENDPOINT_URL",
                "MLFLOW_S3_ENDPOINT_URL",
            )
        },
    }
    assert container["volumeMounts"] == [
        {"name": "data", "mountPath": DATA, "readOnly": True},  # the job only reads there
        {"name": "work", "mountPath": WORK},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    assert pod["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "image-emotion-data"}},
        {"name": "work", "persistentVolumeClaim": {"claimName": "image-emotion-work"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    assert pod["securityContext"] == {
        "runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True, "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert "restartPolicy" not in pod  # the operator sets the pods' from the replica spec
    assert _errors(job) == []


def test_detector_job_on_one_pod_resumes_from_the_run_checkpoint():
    job = pytorch_job(
        "finetune", "finetune-detector", IMAGE, "kfp-run-1", mlflow_tracking_uri="postgresql://db/mlflow",
        paths={"prepared": "data/prepared/emotionroi"},
    )  # fmt: skip
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]  # one pod: no workers
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert command[:9] == [
        "torchrun", "--nnodes", "1", "--nproc-per-node", "1", "-m", "image_emotion.cli", "finetune-detector",
        "--params",
    ]  # fmt: skip
    options = dict(zip(command[10::2], command[11::2], strict=True))
    out = f"{WORK}/outputs/kfp-run-1/finetune_detector"
    assert options == {
        "--prepared": "data/prepared/emotionroi",
        "--objects": "models/objects/detector.pt",
        # where the kfp component of this step checkpoints too: a retried pod or step resumes from it
        "--checkpoint": f"{WORK}/checkpoints/kfp-run-1/finetune_detector/last.pt",
        "--model": f"{out}/detector.pt",
        "--metrics": f"{out}/detector.json",
    }
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "16", "memory": "32G", "nvidia.com/gpu": "1"}
    assert "nodeSelector" not in pod  # none by default
    assert _errors(job) == []


def test_the_schema_check_can_fail():
    job = pytorch_job("x", "pretrain-objects", IMAGE, "r", mlflow_tracking_uri="http://m")
    typo = copy.deepcopy(job)
    typo["spec"]["nprocsPerNode"] = typo["spec"].pop("nprocPerNode")
    assert any("nprocsPerNode" in e for e in _errors(typo))
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "1"
    assert any("replicas" in e for e in _errors(wrong_type))
    no_replicas = copy.deepcopy(job)
    del no_replicas["spec"]["pytorchReplicaSpecs"]
    assert any("pytorchReplicaSpecs" in e for e in _errors(no_replicas))


def test_bad_requests_are_one_line_errors():
    with pytest.raises(ConfigError, match="'train-classifier' does not train data-parallel"):
        pytorch_job("x", "train-classifier", IMAGE, "r", mlflow_tracking_uri="http://m")
    with pytest.raises(ConfigError, match="job name 'Bad_Name'"):
        pytorch_job("Bad_Name", "train-metric", IMAGE, "r", mlflow_tracking_uri="http://m")
    with pytest.raises(ConfigError, match="workers and gpus_per_worker must be >= 1"):
        pytorch_job("x", "train-metric", IMAGE, "r", workers=0, mlflow_tracking_uri="http://m")
    with pytest.raises(ConfigError, match="would keep runs and models inside this pod"):
        pytorch_job("x", "train-metric", IMAGE, "r", mlflow_tracking_uri="sqlite:///mlflow.db")
    with pytest.raises(ConfigError, match="train-metric has no path 'model'; its paths are prepared, out_dir"):
        stage_arguments("train-metric", "r", {"model": "m.pt"})


class FakeCustomObjects:
    """The two CustomObjectsApi calls ``run_training_job`` makes; ``states`` are the successive job states."""

    def __init__(self, states, create_status=None):
        self.states, self.create_status = list(states), create_status
        self.created, self.reads = [], 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        if self.create_status is not None:
            raise ApiException(status=self.create_status, reason="Conflict" if self.create_status == 409 else "No")
        self.created.append((group, version, namespace, plural, body))
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        assert (group, version, namespace, plural) == ("kubeflow.org", "v1", "training", "pytorchjobs")
        state = self.states[min(self.reads, len(self.states) - 1)]
        self.reads += 1
        if isinstance(state, Exception):
            raise state
        return {"metadata": {"name": name}, "status": {"conditions": state}}


def _condition(kind, status="True", message=""):
    return {"type": kind, "status": status, "reason": f"PyTorchJob{kind}", "message": message}


JOB = pytorch_job("ft-7", "finetune-detector", IMAGE, "run-7", mlflow_tracking_uri="http://m")
RUNNING = [_condition("Created"), _condition("Running")]


def test_a_job_that_succeeds_is_followed_to_the_end():
    api = FakeCustomObjects(
        [[], RUNNING, ApiException(status=503, reason="Unavailable"), [*RUNNING, _condition("Succeeded")]]
    )
    job = run_training_job(JOB, "training", timeout_s=5, poll_s=0, api=api)
    assert api.created == [("kubeflow.org", "v1", "training", "pytorchjobs", JOB)] and api.reads == 4
    assert job["status"]["conditions"][-1]["type"] == "Succeeded"


def test_a_failed_job_is_one_line_naming_it_and_its_message():
    failed = _condition("Failed", message="PyTorchJob ft-7 is failed because 1 Master replica(s) failed.")
    api = FakeCustomObjects([RUNNING, [_condition("Created"), _condition("Running", "False"), failed]])
    with pytest.raises(TrainingJobError) as caught:
        run_training_job(JOB, "training", timeout_s=5, poll_s=0, api=api)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("PyTorchJob training/ft-7 failed: PyTorchJob ft-7 is failed because 1 Master")
    assert "kubectl logs -n training ft-7-master-0" in message and "resumes from its checkpoint" in message


def test_a_job_that_does_not_finish_in_time_is_a_timeout():
    api = FakeCustomObjects([RUNNING])
    with pytest.raises(
        TrainingJobError, match=r"PyTorchJob training/ft-7 not finished after 0.05 s \(state: Running\)"
    ):
        run_training_job(JOB, "training", timeout_s=0.05, poll_s=0.01, api=api)
    assert api.reads >= 2


def test_an_existing_job_is_followed_and_other_create_errors_are_one_line():
    api = FakeCustomObjects([[_condition("Succeeded")]], create_status=409)  # a retried step: it exists already
    assert run_training_job(JOB, "training", timeout_s=1, poll_s=0, api=api)["metadata"]["name"] == "ft-7"
    with pytest.raises(TrainingJobError, match=r"could not be created .*kubectl get crd pytorchjobs\.kubeflow\.org"):
        run_training_job(JOB, "training", timeout_s=1, poll_s=0, api=FakeCustomObjects([], create_status=403))
    gone = FakeCustomObjects([ApiException(status=404, reason="Not Found")])
    with pytest.raises(TrainingJobError, match=r"PyTorchJob training/ft-7 cannot be read .*deleted"):
        run_training_job(JOB, "training", timeout_s=1, poll_s=0, api=gone)
