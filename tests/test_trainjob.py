"""The Kubeflow Trainer v2 TrainJob of ``kubeflow/trainjob.py``: its manifest field by field against values worked
out by hand, valid against the TrainJob CRD's schema (``tests/data/trainer/``, vendored from kubeflow/trainer
v2.3.0, unknown fields refused as the API server's strict field validation does), one job per attempt of the
launching step, owned by the launcher pod; ``run_training_job`` (success, failure, timeout, SIGTERM, API errors)
and the launcher step itself against an in-process fake of the Kubernetes API; the RBAC manifest's verbs against
the calls that fake saw."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from image_emotion.errors import ConfigError
from image_emotion.kubeflow import cluster, trainjob
from image_emotion.kubeflow.cluster import ClusterDefaults
from image_emotion.kubeflow.trainjob import (
    LauncherPod,
    TrainingJobError,
    for_attempt,
    launcher_pod,
    node_pod_template,
    run_training_job,
    stage_arguments,
    train_job,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "tests/data/trainer/trainjob_v1alpha1_schema.json").read_text())
RBAC = REPO / "deploy/kubernetes/trainer-rbac.yaml"
IMAGE = "registry.example/image-emotion:0.1.0-abc-cuda"
WORK, DATA = "/mnt/image-emotion/work", "/mnt/image-emotion/data"
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"


def _strict(schema):
    """``schema`` with unknown properties refused wherever it names the properties and says nothing of others
    (the CRD keeps no unknown fields anywhere: no x-kubernetes-preserve-unknown-fields), as the API server's
    strict field validation, which the launcher asks for, refuses them."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            assert not out.get("x-kubernetes-preserve-unknown-fields")
            out["additionalProperties"] = False
        return out
    return [_strict(v) for v in schema] if isinstance(schema, list) else schema


VALIDATOR = jsonschema.Draft7Validator(_strict(SCHEMA))
LOOSE = jsonschema.Draft7Validator(SCHEMA)  # the schema as is: an unknown field passes


def _errors(manifest, validator=VALIDATOR) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def _name_rules_broken(name: str) -> list[str]:
    """The CRD's own CEL rules on ``metadata.name`` (its top-level x-kubernetes-validations: a DNS-1035 label of
    at most 63 characters), evaluated here: jsonschema knows no CEL."""
    broken = []
    for rule in SCHEMA["x-kubernetes-validations"]:
        if match := re.fullmatch(r"self\.metadata\.name\.matches\('(.+)'\)", rule["rule"]):
            ok = re.search(match.group(1), name) is not None
        elif match := re.fullmatch(r"size\(self\.metadata\.name\) <= (\d+)", rule["rule"]):
            ok = len(name) <= int(match.group(1))
        else:
            raise AssertionError(f"a rule this test does not know: {rule}")
        broken += [] if ok else [rule["message"]]
    return broken


def _pod_patch(job) -> dict:
    (patch,) = job["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    return replicated["template"]["spec"]["template"]


def test_the_vendored_schema_is_trainer_v2_3s_trainjob():
    readme = (REPO / "tests/data/trainer/README.md").read_text()
    assert "kubeflow/trainer/blob/v2.3.0/manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml" in readme
    spec = SCHEMA["properties"]["spec"]
    assert sorted(spec["properties"]) == [
        "activeDeadlineSeconds", "initializer", "managedBy", "runtimePatches", "runtimeRef", "suspend", "trainer",
    ]  # fmt: skip
    assert sorted(spec["properties"]["trainer"]["properties"]) == [
        "args", "command", "env", "image", "numNodes", "numProcPerNode", "resourcesPerNode",
    ]  # fmt: skip
    assert "x-kubernetes-preserve-unknown-fields" not in json.dumps(SCHEMA)  # so _strict changes no open object


def test_metric_job_on_three_pods_of_two_gpus_field_by_field():
    settings = ClusterDefaults(gpu_node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
    job = train_job(
        "metric-run-7", "train-metric", IMAGE, "run-7", workers=3, gpus_per_worker=2,
        mlflow_tracking_uri="http://mlflow.mlops:5000", overrides=["metric.epochs=100"], cluster=settings,
    )  # fmt: skip
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    labels = {"app.kubernetes.io/name": "image-emotion", "app.kubernetes.io/component": "train-metric"}
    assert job["metadata"] == {"name": "metric-run-7", "labels": {**labels, "image-emotion/run": "run-7"}}
    spec = job["spec"]
    # Trainer's default torchrun runtime, named in full (apiGroup and kind are its defaults too)
    assert spec["runtimeRef"] == {
        "name": "torch-distributed", "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
    }  # fmt: skip
    # one attempt of the launching step (its pod's deadline, cluster.CPU_STEP) less 30 min to copy in and clean up
    assert spec["activeDeadlineSeconds"] == 24 * 3600 - 1800 == trainjob.JOB_DEADLINE_S
    trainer = spec["trainer"]
    assert trainer["image"] == IMAGE
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 2)  # integers (int32 in the CRD)
    # Trainer has no workingDir: the shell changes to the data volume, then becomes torchrun
    assert trainer["command"] == ["/bin/sh", "-c", 'cd "$0" && exec "$@"', DATA]
    out = f"{WORK}/outputs/run-7/train_metric"
    assert trainer["args"] == [
        "torchrun", "--nnodes", "3", "--nproc-per-node", "2", "-m", "image_emotion.cli", "train-metric",
        "--params", "params.yaml", "--set", "metric.epochs=100",
        "--prepared", "data/prepared/main", "--out-dir", f"{out}/metric", "--metrics", f"{out}/metric.json",
        "--ablation", f"{out}/metric_ablation.json",
    ]  # fmt: skip
    # 8 CPUs (up to 16) and 32G a GPU (cluster.GPU_STEP), two GPUs; the ephemeral storage kfp cannot ask for
    assert trainer["resourcesPerNode"] == {
        "requests": {"cpu": "16", "memory": "64G", "ephemeral-storage": "2Gi"},
        "limits": {"cpu": "32", "memory": "64G", "nvidia.com/gpu": "2"},
    }
    env = {e["name"]: e for e in trainer["env"]}
    assert env["IMAGE_EMOTION_PIPELINE_RUN"] == {"name": "IMAGE_EMOTION_PIPELINE_RUN", "value": "run-7"}
    assert env["IMAGE_EMOTION_KFP_RUN"]["value"] == "run-7"
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.mlops:5000"
    assert env["HOME"] == {"name": "HOME", "value": "/tmp"}  # writable under any uid
    assert not [name for name in env if name.startswith("PET_")]  # the Torch plugin's: Trainer refuses them here
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in trainer["env"] if "valueFrom" in e}
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
    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == "image-emotion/launcher"  # a domain-prefixed path, as Trainer's webhook wants
    assert [r["name"] for r in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]] == ["node"]
    template = _pod_patch(job)
    assert template["metadata"] == {"labels": labels, "annotations": {"sidecar.istio.io/inject": "false"}}
    pod = template["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "node"  # the runtime's trainer container
    assert container["volumeMounts"] == [
        {"name": "data", "mountPath": DATA, "readOnly": True},  # the job only reads there
        {"name": "work", "mountPath": WORK},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert "env" not in container  # Trainer refuses env in a patch of the container "node": spec.trainer's
    assert pod["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "image-emotion-data"}},
        {"name": "work", "persistentVolumeClaim": {"claimName": "image-emotion-work"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    assert pod["securityContext"] == {
        "runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True, "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert _errors(job) == [] and _name_rules_broken(job["metadata"]["name"]) == []


def test_detector_job_on_one_pod_resumes_from_the_run_checkpoint():
    job = train_job(
        "finetune", "finetune-detector", IMAGE, "kfp-run-1", mlflow_tracking_uri="postgresql://db/mlflow",
        paths={"prepared": "data/prepared/emotionroi"},
    )  # fmt: skip
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (1, 1)
    args = trainer["args"]
    assert args[:9] == [
        "torchrun", "--nnodes", "1", "--nproc-per-node", "1", "-m", "image_emotion.cli", "finetune-detector",
        "--params",
    ]  # fmt: skip
    options = dict(zip(args[10::2], args[11::2], strict=True))
    out = f"{WORK}/outputs/kfp-run-1/finetune_detector"
    assert options == {
        "--prepared": "data/prepared/emotionroi",
        "--objects": "models/objects/detector.pt",
        # where the kfp component of this step checkpoints too: a retried pod or step resumes from it
        "--checkpoint": f"{WORK}/checkpoints/kfp-run-1/finetune_detector/last.pt",
        "--model": f"{out}/detector.pt",
        "--metrics": f"{out}/detector.json",
    }
    assert trainer["resourcesPerNode"]["limits"] == {"cpu": "16", "memory": "32G", "nvidia.com/gpu": "1"}
    assert "nodeSelector" not in _pod_patch(job)["spec"]  # none by default
    assert _errors(job) == []


def test_a_misspelled_field_fails_the_strict_schema_which_the_schema_as_is_lets_pass():
    job = train_job("x", "pretrain-objects", IMAGE, "r", mlflow_tracking_uri="http://m")
    typos = []
    top = copy.deepcopy(job)  # a top-level spec field
    top["spec"]["runtimePatch"] = top["spec"].pop("runtimePatches")
    typos.append((top, "runtimePatch"))
    trainer = copy.deepcopy(job)
    trainer["spec"]["trainer"]["numProcsPerNode"] = trainer["spec"]["trainer"].pop("numProcPerNode")
    typos.append((trainer, "numProcsPerNode"))
    deep = copy.deepcopy(job)  # inside the pod patch, in a core/v1 type
    deep_container = _pod_patch(deep)["spec"]["containers"][0]
    deep_container["volumeMount"] = deep_container.pop("volumeMounts")
    typos.append((deep, "volumeMount"))
    for bad, wrong in typos:
        assert any(f"'{wrong}' was unexpected" in e for e in _errors(bad)), wrong
        assert _errors(bad, LOOSE) == [], wrong  # the strictness is what catches it


def test_a_wrong_type_a_bad_quantity_or_a_missing_field_fails_the_schema():
    job = train_job("x", "pretrain-objects", IMAGE, "r", mlflow_tracking_uri="http://m")
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["trainer"]["numNodes"] = "1"
    assert any(e.startswith("spec.trainer.numNodes: '1' is not of type 'integer'") for e in _errors(wrong_type))
    quantity = copy.deepcopy(job)
    quantity["spec"]["trainer"]["resourcesPerNode"]["limits"]["memory"] = "32 GB"
    assert any("resourcesPerNode.limits.memory" in e for e in _errors(quantity))
    nameless = copy.deepcopy(job)
    del nameless["spec"]["runtimeRef"]["name"]
    assert any("'name' is a required property" in e for e in _errors(nameless))
    assert _name_rules_broken("Finetune_Detector") == ["metadata.name must match RFC 1035 DNS label format"]
    assert _name_rules_broken("a" * 64) == ["metadata.name must be no more than 63 characters"]


def test_bad_requests_are_one_line_errors():
    with pytest.raises(ConfigError, match="'train-classifier' does not train data-parallel"):
        train_job("x", "train-classifier", IMAGE, "r", mlflow_tracking_uri="http://m")
    with pytest.raises(ConfigError, match="job name 'Bad_Name'"):
        train_job("Bad_Name", "train-metric", IMAGE, "r", mlflow_tracking_uri="http://m")
    with pytest.raises(ConfigError, match=r"job name 'a{53}': .* <= 52"):
        train_job("a" * 53, "train-metric", IMAGE, "r", mlflow_tracking_uri="http://m")
    with pytest.raises(ConfigError, match="workers and gpus_per_worker must be >= 1"):
        train_job("x", "train-metric", IMAGE, "r", workers=0, mlflow_tracking_uri="http://m")
    with pytest.raises(ConfigError, match="would keep runs and models inside this pod"):
        train_job("x", "train-metric", IMAGE, "r", mlflow_tracking_uri="sqlite:///mlflow.db")
    with pytest.raises(ConfigError, match="train-metric has no path 'model'; its paths are prepared, out_dir"):
        stage_arguments("train-metric", "r", {"model": "m.pt"})
    job = train_job("a" * 44, "train-metric", IMAGE, "r", mlflow_tracking_uri="http://m")
    with pytest.raises(ConfigError, match=r"job name 'a{44}': .* <= 43"):  # no room for the attempt's suffix
        for_attempt(job, "ns", None)


LAUNCHER = LauncherPod("image-emotion-xk2p9-system-container-impl-1234567890", "0f6c-uid-1", "ml-team")
JOB = train_job("finetune-detector-0123456789ab", "finetune-detector", IMAGE, "run-7", mlflow_tracking_uri="http://m")


def test_each_attempt_is_a_new_job_named_after_its_launcher_pod():
    first = for_attempt(JOB, "ml-team", LAUNCHER)
    retry = for_attempt(JOB, "ml-team", LauncherPod("image-emotion-xk2p9-retry-2", "9a1d-uid-2", "ml-team"))
    names = first["metadata"]["name"], retry["metadata"]["name"]
    assert names[0] != names[1]  # a retried step (a new pod) submits a new job, never follows the old one
    assert all(re.fullmatch(r"finetune-detector-0123456789ab-[0-9a-f]{8}", n) for n in names)
    assert for_attempt(JOB, "ml-team", LAUNCHER)["metadata"]["name"] == names[0]  # the same pod: the same job
    assert JOB["metadata"]["name"] == "finetune-detector-0123456789ab"  # the given manifest is left as it was
    # without a launcher (a local run) a random suffix: still one job per call
    assert (
        for_attempt(JOB, "ml-team", None)["metadata"]["name"] != for_attempt(JOB, "ml-team", None)["metadata"]["name"]
    )
    longest = for_attempt(train_job("a" * 43, "train-metric", IMAGE, "r", mlflow_tracking_uri="http://m"), "n", None)
    name = longest["metadata"]["name"]
    assert _name_rules_broken(name) == [] and _errors(longest) == []
    assert (
        len(name) == 52 and len(f"{name}-node-0-999") <= 63
    )  # a pod's hostname (the master address is the first one's)
    assert first["spec"] == JOB["spec"]


def test_the_job_is_owned_by_the_launcher_pod_in_its_namespace():
    job = for_attempt(JOB, "ml-team", LAUNCHER)
    assert job["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1", "kind": "Pod", "name": LAUNCHER.name, "uid": LAUNCHER.uid,
            "controller": False, "blockOwnerDeletion": False,
        }
    ]  # fmt: skip
    assert _errors(job) == []
    # an owner in another namespace would count as absent and the job be collected at once: none then
    assert "ownerReferences" not in for_attempt(JOB, "other", LAUNCHER)["metadata"]
    assert "ownerReferences" not in for_attempt(JOB, "ml-team", None)["metadata"]
    environ = {"POD_NAME": LAUNCHER.name, "POD_UID": LAUNCHER.uid, "POD_NAMESPACE": "ml-team"}
    assert launcher_pod(environ) == LAUNCHER
    assert launcher_pod({**environ, "POD_UID": ""}) is None and launcher_pod({}) is None


def test_the_pipeline_gives_the_launcher_its_pods_name_uid_and_namespace(tmp_path):
    from image_emotion.kubeflow.pipeline import compile_pipeline

    _, platform = yaml.safe_load_all(compile_pipeline(tmp_path / "pipeline.yaml").read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    fields = {f["name"]: f["fieldPath"] for f in executors["exec-finetune-detector-job-op"]["fieldPathAsEnv"]}
    assert fields == {
        cluster.RUN_ID_ENV: cluster.RUN_ID_FIELD,
        "POD_NAME": "metadata.name", "POD_UID": "metadata.uid", "POD_NAMESPACE": "metadata.namespace",
    }  # fmt: skip
    assert "POD_UID" not in json.dumps(executors["exec-finetune-detector-op"])  # only the launcher needs them


def test_the_node_pod_template_is_the_patch_with_the_trainers_container():
    job = train_job("x", "train-metric", IMAGE, "r", workers=2, mlflow_tracking_uri="http://m")
    template = node_pod_template(job)
    (container,) = template["spec"]["containers"]
    trainer = job["spec"]["trainer"]
    assert container["name"] == "node" and container["image"] == IMAGE
    assert (container["command"], container["args"], container["env"]) == (
        trainer["command"],
        trainer["args"],
        trainer["env"],
    )
    assert container["resources"] == trainer["resourcesPerNode"]
    assert container["securityContext"] == _pod_patch(job)["spec"]["containers"][0]["securityContext"]
    assert template["spec"]["volumes"] == _pod_patch(job)["spec"]["volumes"]


# --- run_training_job and the launcher step against a fake Kubernetes API ---------------------------------------


def _condition(kind, status="True", message=""):
    return {"type": kind, "status": status, "reason": kind, "message": message}


class FakeKube:
    """A test double of the Kubernetes API client only (CustomObjectsApi and CoreV1Api, the calls the launcher
    makes), because no cluster can run here: it records each call as (API group, resource, verb), the form of an
    RBAC rule, keeps the created jobs, answers ``states`` (successive lists of status conditions, or an exception
    to raise) to the polls, and lists two pods per job with a log each."""

    def __init__(self, states=(), create_error=None, delete_error=None, on_create=None, on_get=None):
        self.states, self.create_error, self.delete_error = list(states), create_error, delete_error
        self.on_create, self.on_get = on_create, on_get
        self.calls, self.jobs, self.deleted, self.reads = [], {}, [], 0

    def _call(self, group, resource, verb):
        self.calls.append((group, resource, verb))

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, field_validation=None):
        self._call(group, plural, "create")
        assert (version, field_validation) == ("v1alpha1", "Strict")  # an unknown field is refused, not dropped
        if self.create_error is not None:
            raise self.create_error
        self.jobs[(namespace, body["metadata"]["name"])] = copy.deepcopy(body)
        if self.on_create:
            self.on_create(body)
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self._call(group, plural, "get")
        if self.on_get:
            self.on_get()
        state = self.states[min(self.reads, len(self.states) - 1)]
        self.reads += 1
        if isinstance(state, Exception):
            raise state
        return {**self.jobs[(namespace, name)], "status": {"conditions": state}}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **options):
        self._call(group, plural, "delete")
        assert options["propagation_policy"] == "Background"  # its JobSet and pods go with it
        if self.delete_error is not None:
            raise self.delete_error
        self.deleted.append((namespace, name))
        self.jobs.pop((namespace, name), None)

    def list_namespaced_pod(self, namespace, label_selector, **options):
        self._call("", "pods", "list")
        job = label_selector.removeprefix("jobset.sigs.k8s.io/jobset-name=")
        pods = [SimpleNamespace(metadata=SimpleNamespace(name=f"{job}-node-0-{i}-abcde")) for i in range(2)]
        return SimpleNamespace(items=pods)

    def read_namespaced_pod_log(self, name, namespace, container, tail_lines, **options):
        self._call("", "pods/log", "get")
        assert container == "node"
        return f"log of {name}: NCCL error on rank {name[-7]}"


ATTEMPT = for_attempt(JOB, "training", LauncherPod("launcher-pod", "uid-1", "training"))
NAME = ATTEMPT["metadata"]["name"]
RUNNING = [_condition("Suspended", "False")]


def _run(api, **options):
    return run_training_job(ATTEMPT, "training", api=api, core=api, **{"timeout_s": 5, "poll_s": 0, **options})


def test_a_job_that_completes_is_followed_to_the_end_and_kept():
    api = FakeKube([[], RUNNING, ApiException(status=503, reason="Unavailable"), [_condition("Complete")]])
    job = _run(api)
    assert job["status"]["conditions"][-1]["type"] == "Complete" and api.reads == 4
    assert list(api.jobs) == [("training", NAME)] and api.deleted == []  # its owner's deletion collects it
    assert ("", "pods", "list") not in api.calls  # no logs to print


def test_a_failed_job_is_one_line_naming_it_its_logs_printed_and_the_job_deleted(capsys):
    failed = _condition("Failed", message="jobset failed:\n job node-0 BackoffLimitExceeded")
    api = FakeKube([RUNNING, [_condition("Suspended", "False"), failed]])
    with pytest.raises(TrainingJobError) as caught:
        _run(api)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"TrainJob training/{NAME} failed: jobset failed: job node-0 BackoffLimitExceeded;")
    assert "resumes from the run's checkpoint" in message
    assert api.deleted == [("training", NAME)]
    err = capsys.readouterr().err
    assert f"log of {NAME}-node-0-1-abcde: NCCL error on rank 1" in err  # kept in the step's log
    assert err.index("NCCL error") < err.index(f"deleted TrainJob training/{NAME}")  # read before the deletion


def test_a_job_that_does_not_finish_in_time_is_deleted_after_its_logs_are_printed(capsys):
    api = FakeKube([RUNNING])
    with pytest.raises(TrainingJobError, match=rf"TrainJob training/{NAME} not finished after 0.05 s \(state: Susp"):
        _run(api, timeout_s=0.05, poll_s=0.01)
    assert api.reads >= 2 and api.deleted == [("training", NAME)]
    assert "NCCL error" in capsys.readouterr().err


def test_a_stopped_step_deletes_its_job_and_restores_the_signal_handler():
    before = signal.getsignal(signal.SIGTERM)
    api = FakeKube([RUNNING], on_get=lambda: os.kill(os.getpid(), signal.SIGTERM))  # the run is stopped
    with pytest.raises(TrainingJobError, match=rf"TrainJob training/{NAME}: this step was stopped \(SIGTERM\)"):
        _run(api)
    assert api.deleted == [("training", NAME)]
    assert ("", "pods", "list") not in api.calls  # no time for logs within the grace period
    assert signal.getsignal(signal.SIGTERM) is before


def test_create_errors_are_one_line_and_an_existing_job_of_this_attempt_is_followed():
    api = FakeKube([[_condition("Complete")]], create_error=ApiException(status=409, reason="Conflict"))
    api.jobs[("training", NAME)] = ATTEMPT  # created by this attempt already (a client-side timeout)
    assert _run(api)["metadata"]["name"] == NAME
    refused = ApiException(status=403, reason="Forbidden")
    api = FakeKube(create_error=refused)
    with pytest.raises(TrainingJobError, match=r"could not be created \(Forbidden\); is Kubeflow Trainer >= v2.2"):
        _run(api)
    assert api.calls == [(GROUP, PLURAL, "create")]  # nothing created: nothing to delete
    invalid = ApiException(status=422, reason="Unprocessable Entity")
    invalid.body = json.dumps({"message": 'TrainJob.trainer.kubeflow.org "x" is invalid: spec.runtimeRef: ...'})
    with pytest.raises(TrainingJobError, match=r'could not be created \(TrainJob.trainer.kubeflow.org "x" is inv'):
        _run(FakeKube(create_error=invalid))


def test_a_job_that_cannot_be_read_is_deleted_and_a_failed_deletion_hides_nothing(capsys):
    api = FakeKube([ApiException(status=403, reason="Forbidden")])
    with pytest.raises(TrainingJobError, match=rf"TrainJob training/{NAME} cannot be read \(Forbidden\)"):
        _run(api)
    assert api.deleted == [("training", NAME)]
    api = FakeKube([[_condition("Failed", message="boom")]], delete_error=ApiException(status=500, reason="Oops"))
    with pytest.raises(TrainingJobError, match=r"failed: boom;"):  # the job's failure, not the deletion's
        _run(api)
    assert f"could not delete TrainJob training/{NAME} (Oops): kubectl delete trainjobs" in capsys.readouterr().err


def test_the_launcher_step_retried_after_a_failed_job_submits_a_new_one(tmp_path, monkeypatch):
    """finetune_detector_job_op twice, as kfp's retry runs it: the first pod's job fails and is deleted; the retry,
    another pod, submits another job (its own name and owner), which completes and whose detector is returned."""
    from kfp import dsl
    from tiny import job_launcher_inputs, tiny_config

    from image_emotion.kubeflow.components import finetune_detector_job_op

    dataset, objects = job_launcher_inputs(tmp_path, monkeypatch, namespace="ml-team")
    monkeypatch.setattr(trainjob.time, "sleep", lambda s: None)

    def train(body):  # what a job that completes writes, where its args say
        args = body["spec"]["trainer"]["args"]
        stage = args.index("finetune-detector")
        options = dict(zip(args[stage + 1 :: 2], args[stage + 2 :: 2], strict=True))
        Path(options["--model"]).parent.mkdir(parents=True, exist_ok=True)
        Path(options["--model"]).write_bytes(b"trained")
        Path(options["--metrics"]).write_text(json.dumps({"recall_at_2": 0.75}))

    args = {
        "params_yaml": yaml.safe_dump(tiny_config().to_dict()), "mlflow_tracking_uri": "http://mlflow.mlops:5000",
        "data_dir": str(tmp_path), "checkpoint_root": str(tmp_path / "work/checkpoints"),
        "dataset": dsl.Dataset(uri=str(dataset)), "objects": dsl.Model(uri=str(objects)),
        "image": IMAGE, "workers": 2, "gpus_per_worker": 1, "data_pvc": "d", "work_pvc": "w", "mlflow_secret": "m",
        "s3_secret": "s", "gpu_type": "nvidia.com/gpu", "gpu_tolerations": [], "gpu_node_selector": {},
    }  # fmt: skip
    fakes = []
    for attempt, states in enumerate(([[_condition("Failed", message="NCCL timeout")]], [[_condition("Complete")]])):
        monkeypatch.setenv("POD_NAME", f"launcher-{attempt}")
        monkeypatch.setenv("POD_UID", f"uid-{attempt}")
        monkeypatch.setenv("POD_NAMESPACE", "ml-team")
        fake = FakeKube(states, on_create=train if attempt else None)
        fakes.append(fake)
        monkeypatch.setattr(trainjob, "_clients", lambda fake=fake: (fake, fake))
        out, metrics = dsl.Model(uri=str(tmp_path / f"out-{attempt}")), dsl.Metrics(uri=str(tmp_path / "m.json"))
        if attempt == 0:
            with pytest.raises(TrainingJobError, match="failed: NCCL timeout"):
                finetune_detector_job_op(**args, detector=out, metrics=metrics)
        else:
            finetune_detector_job_op(**args, detector=out, metrics=metrics)
    ((_, failed_name),) = fakes[0].deleted  # the first attempt's job, deleted when it failed
    ((_, done_name), job), *_ = fakes[1].jobs.items()  # the retry's, kept: its owner's deletion collects it
    assert fakes[1].deleted == [] and len(fakes[1].jobs) == 1
    assert failed_name != done_name
    for name in (failed_name, done_name):
        assert re.fullmatch(r"finetune-detector-[0-9a-f]{12}-[0-9a-f]{8}", name) and _name_rules_broken(name) == []
    assert [len([c for c in fake.calls if c[2] == "create"]) for fake in fakes] == [1, 1]
    assert job["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1", "kind": "Pod", "name": "launcher-1", "uid": "uid-1", "controller": False,
            "blockOwnerDeletion": False,
        }
    ]  # fmt: skip
    assert _errors(job) == []
    assert (tmp_path / "out-1/detector.pt").read_bytes() == b"trained"
    assert metrics.metadata == {"recall_at_2": 0.75}


def test_the_rbac_role_grants_exactly_the_calls_the_launcher_makes(capsys):
    """The Role's (API group, resource, verb) triples are the calls the launcher made in every way a job can end
    (completed, failed, timed out, stopped, unreadable), as the fake recorded them: none missing, none more."""
    seen = set()
    for states, options in (
        ([RUNNING, [_condition("Complete")]], {}),
        ([[_condition("Failed", message="x")]], {}),
        ([RUNNING], {"timeout_s": 0}),
        ([ApiException(status=404, reason="Not Found")], {}),
    ):
        api = FakeKube(states)
        with contextlib.suppress(TrainingJobError):
            _run(api, **options)
        seen |= set(api.calls)
    stopped = FakeKube([RUNNING], on_get=lambda: os.kill(os.getpid(), signal.SIGTERM))
    with contextlib.suppress(TrainingJobError):
        _run(stopped)
    seen |= set(stopped.calls)
    documents = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    (role,) = [d for d in documents if d["kind"] == "Role"]
    (binding,) = [d for d in documents if d["kind"] == "RoleBinding"]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    expected = {
        (GROUP, PLURAL, "create"), (GROUP, PLURAL, "get"), (GROUP, PLURAL, "delete"),
        ("", "pods", "list"), ("", "pods/log", "get"),
    }  # fmt: skip
    assert seen == expected and granted == expected
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "default-editor", "namespace": "IMAGE_EMOTION_NAMESPACE"}
    ]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "IMAGE_EMOTION_NAMESPACE"
    text = RBAC.read_text()
    for verb in ("create", "get", "delete", "list"):  # every verb says why it is there
        assert re.search(rf"# .*\b{verb}:", text), verb
