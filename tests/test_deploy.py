"""The Kubernetes manifests under deploy/: the one-off Job that makes the volumes writable for the pods' user
(root with three capabilities, nothing more), and the in-cluster MLflow server, which must accept the host name
the pipeline's pods call it by."""

import re
from pathlib import Path

import pytest
import yaml
from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header

from image_emotion.kubeflow import cluster

DEPLOY = Path(__file__).resolve().parents[1] / "deploy/kubernetes"


def _documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def _kubeflow_section(repo_root: Path) -> str:
    text = (repo_root / "README.md").read_text()
    start = text.index("## Kubeflow\n")
    return text[start : text.index("## Containers\n", start)]


def test_the_volume_permissions_job_makes_the_volumes_the_pods_user_s_with_the_least_privilege(repo_root):
    assert (repo_root / cluster.PERMISSIONS_MANIFEST).parent == DEPLOY  # the path the pods' error names
    (job,) = _documents(Path(cluster.PERMISSIONS_MANIFEST).name)
    assert (job["kind"], job["metadata"]["name"]) == ("Job", cluster.PERMISSIONS_JOB)
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 0 and pod["securityContext"]["runAsNonRoot"] is False
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER", "DAC_OVERRIDE"]}
    assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
    assert "privileged" not in context and "initContainers" not in pod
    # the project's own CPU image, named by digest when applied (the placeholder README's sed replaces)
    assert container["image"] == "IMAGE_EMOTION_CPU_IMAGE"
    assert job["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: claims[m["name"]] for m in container["volumeMounts"]}
    assert mounts == {cluster.WORK_MOUNT: cluster.DEFAULTS.work_pvc, cluster.DATA_MOUNT: cluster.DEFAULTS.data_pvc}
    script = "\n".join(container["args"])
    assert f"chown -R {cluster.UID}:{cluster.UID} {cluster.WORK_MOUNT}" in script  # checkpoints of any earlier run
    assert f"chown {cluster.UID}:{cluster.UID} {cluster.DATA_MOUNT}" in script
    # the runbook runs it after the volumes exist and before anything writes to them
    section = _kubeflow_section(repo_root)
    runbook = section[section.index("### From a clean clone") :]
    order = [runbook.index(f"deploy/kubernetes/{name}") for name in ("volumes", "volume-permissions", "load-data")]
    assert order == sorted(order)
    assert f"job/{cluster.PERMISSIONS_JOB}" in runbook


def test_the_mlflow_server_accepts_the_service_name_the_pods_use(repo_root):
    documents = _documents("mlflow.yaml")
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    (service,) = [d for d in documents if d["kind"] == "Service"]
    (port,) = service["spec"]["ports"]
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port['port']}"
    assert host == "mlflow.mlflow.svc:5000"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["mlflow", "server"]
    (allowed,) = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--allowed-hosts=")]
    hosts = allowed.split(",")
    # MLflow's own check: without --allowed-hosts the pods' requests are refused (403 "Invalid Host header")
    assert not is_allowed_host_header(get_default_allowed_hosts(), host)
    for name in (host, f"{host.split(':')[0]}.cluster.local:5000", "localhost:5000"):
        assert is_allowed_host_header(hosts, name), name
    assert "*" not in hosts  # not every host: the check stays on
    # the URI the README passes as mlflow_tracking_uri is one the server accepts
    section = _kubeflow_section(repo_root)
    (uri_host,) = set(re.findall(r'"mlflow_tracking_uri": "http://([^/"]+)"', section))
    assert is_allowed_host_header(hosts, uri_host)
    assert "--allowed-hosts" in section


@pytest.mark.parametrize("name", ["load-data.yaml", "volume-permissions.yaml"])
def test_the_one_off_jobs_get_no_istio_sidecar(name):
    (job,) = _documents(name)  # Kubeflow profile namespaces inject one, and a Job with a sidecar never completes
    assert job["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"


def test_the_readme_names_the_kfp_backend_the_pipeline_needs(repo_root):
    section = _kubeflow_section(repo_root)
    assert "Kubeflow Pipelines **2.17.0 or later**" in section and "#13437" in section
