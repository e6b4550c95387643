"""Pod Security "restricted" for the namespace the pipeline runs in (deploy/kubernetes/namespace.yaml) and the
pods the project specifies in full (deploy/'s Jobs and Deployment, the PyTorchJob), checked against the standard's
rules; the one root Job is the documented exception. The namespace's LimitRange gives what kfp cannot set on a step
(an ephemeral-storage request) and defaults no step of the pipeline depends on."""

from pathlib import Path

import pytest
import yaml
from test_deploy_schemas import object_files
from test_kubeflow_resources import quantity

from image_emotion.kubeflow import cluster
from image_emotion.kubeflow.trainjob import node_pod_template, train_job

DEPLOY = Path(__file__).resolve().parents[1] / "deploy/kubernetes"
# the volume types "restricted" admits (Kubernetes Pod Security Standards, "Volume Types")
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip
PIPELINE_NAMESPACE_PODS = ("load-data.yaml",)  # the manifests applied in the pipeline's namespace, root Job aside


def restricted_violations(pod: dict) -> list[str]:
    """What Pod Security "restricted" refuses in the pod spec ``pod``: host namespaces, hostPath and other volume
    types, privileged containers, privilege escalation, capabilities not dropped (or added beyond
    NET_BIND_SERVICE), a container that may run as root (runAsNonRoot not true, uid 0), no RuntimeDefault or
    Localhost seccomp profile, host ports. Pod-level fields count for every container, as the standard says."""
    found = [key for key in ("hostNetwork", "hostPID", "hostIPC") if pod.get(key)]
    found += [
        f"volume {v['name']}: {', '.join(sorted(set(v) - {'name'}))}"
        for v in pod.get("volumes", [])
        if not set(v) - {"name"} <= RESTRICTED_VOLUMES
    ]
    context = pod.get("securityContext") or {}
    if context.get("runAsUser") == 0:
        found.append("the pod runs as uid 0")
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        name, own = container["name"], container.get("securityContext") or {}
        if own.get("privileged"):
            found.append(f"{name}: privileged")
        if own.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = own.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities {sorted(capabilities['add'])}")
        if own.get("runAsNonRoot", context.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot is not true")
        if own.get("runAsUser") == 0:
            found.append(f"{name}: runs as uid 0")
        seccomp = (own.get("seccompProfile") or context.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccomp profile {seccomp or 'unset'}")
        found += [f"{name}: host port {p['hostPort']}" for p in container.get("ports", []) if p.get("hostPort")]
    return found


def _documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def _pods(name: str) -> list[dict]:
    """The pod specs of the Jobs and Deployments of a manifest file."""
    return [d["spec"]["template"]["spec"] for d in _documents(name) if d["kind"] in ("Job", "Deployment")]


@pytest.mark.parametrize("name", [*PIPELINE_NAMESPACE_PODS, "mlflow.yaml"])
def test_the_projects_pods_pass_pod_security_restricted(name):
    (pod,) = _pods(name)
    assert restricted_violations(pod) == []


def test_the_trainjobs_pods_pass_pod_security_restricted():
    job = train_job("j", "train-metric", "registry.example/i@sha256:" + "0" * 64, "run-1", workers=2,
                    mlflow_tracking_uri="http://mlflow:5000")  # fmt: skip
    assert restricted_violations(node_pod_template(job)["spec"]) == []


def test_the_root_job_is_the_exception_restricted_refuses():
    """volume-permissions.yaml chowns the volumes as root, which restricted refuses; namespace.yaml's header runs it
    before the level is enforced. It also shows the check can fail."""
    (pod,) = _pods("volume-permissions.yaml")
    found = restricted_violations(pod)
    assert found == [
        "the pod runs as uid 0",
        "chown: adds capabilities ['CHOWN', 'DAC_OVERRIDE', 'FOWNER']",
        "chown: runAsNonRoot is not true",
    ]
    header = (DEPLOY / "namespace.yaml").read_text().split("apiVersion:")[0]
    assert "volume-permissions.yaml" in header and "enforce=baseline" in header
    loose = {"volumes": [{"name": "h", "hostPath": {"path": "/"}}], "hostNetwork": True, "containers": [{"name": "c"}]}
    assert len(restricted_violations(loose)) == 2 + 4  # host network, hostPath; four rules of the container


def test_the_namespace_enforces_restricted_and_defaults_what_kfp_cannot_set():
    (namespace,) = [d for d in _documents("namespace.yaml") if d["kind"] == "Namespace"]
    (limits,) = [d for d in _documents("namespace.yaml") if d["kind"] == "LimitRange"]
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
    # one placeholder for the namespace (the header's sed replaces it), the LimitRange in it
    assert namespace["metadata"]["name"] == limits["metadata"]["namespace"] == "IMAGE_EMOTION_NAMESPACE"
    (container,) = [item for item in limits["spec"]["limits"] if item["type"] == "Container"]
    # the ephemeral-storage request kfp 2.17 cannot put on a step, the PyTorchJob's own
    assert container["defaultRequest"]["ephemeral-storage"] == cluster.EPHEMERAL_STORAGE_REQUEST
    assert "ephemeral-storage" not in container.get("default", {})  # no limit: artifacts of several GB pass there
    for resource in ("cpu", "memory"):
        assert quantity(container["default"][resource]) >= quantity(container["defaultRequest"][resource])
    # nothing caps what the pipeline's largest steps ask for
    assert "max" not in container and "maxLimitRequestRatio" not in container


@pytest.mark.parametrize("name", [p.relative_to(DEPLOY).as_posix() for p in object_files()])  # base/ too
def test_every_container_in_deploy_has_requests_and_limits_and_every_job_a_deadline(name):
    for document in _documents(name):
        if document["kind"] == "Job":
            assert document["spec"]["activeDeadlineSeconds"] > 0, name
    for pod in _pods(name):
        for container in pod["containers"]:
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[kind]), (name, kind)
            for resource in ("cpu", "memory"):
                assert quantity(resources["limits"][resource]) >= quantity(resources["requests"][resource])
