"""The Kubernetes manifests under deploy/: the volumes as a kustomize base and two overlays (ReadWriteMany on a named
class, or ReadWriteOnce on the default class with every pod on one node), the one-off Job that makes the volumes
writable for the pods' user (root with three capabilities, nothing more), and the in-cluster MLflow server, which
must accept the host name the pipeline's pods call it by. Their schemas are tests/test_deploy_schemas.py's."""

import re
from pathlib import Path

import pytest
import yaml
from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header
from test_deploy_schemas import KUSTOMIZATION, PLACEHOLDERS, kustomize, object_files

from image_emotion.kubeflow import cluster

DEPLOY = Path(__file__).resolve().parents[1] / "deploy/kubernetes"


def _documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def _kubeflow_section(repo_root: Path) -> str:
    return (repo_root / "docs/kubeflow.md").read_text()  # the Kubeflow page of the documentation


def _claims(documents: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d["spec"] for d in documents if d["kind"] == "PersistentVolumeClaim"}


def test_the_base_holds_the_two_claims_the_pipeline_mounts_and_leaves_the_access_mode_to_an_overlay():
    base = yaml.safe_load((DEPLOY / "base/kustomization.yaml").read_text())
    assert base == {**KUSTOMIZATION, "resources": ["volumes.yaml"]}
    claims = _claims(kustomize(DEPLOY / "base"))
    assert set(claims) == {cluster.DEFAULTS.data_pvc, cluster.DEFAULTS.work_pvc}  # the pipeline's defaults
    for spec in claims.values():  # applied alone, the API server refuses them: an overlay must choose
        assert "accessModes" not in spec and "storageClassName" not in spec
    assert claims[cluster.DEFAULTS.data_pvc]["resources"]["requests"]["storage"] == "100Gi"
    assert claims[cluster.DEFAULTS.work_pvc]["resources"]["requests"]["storage"] == "20Gi"


@pytest.mark.parametrize(
    ("overlay", "modes", "storage_class"),
    [("rwx", ["ReadWriteMany"], "IMAGE_EMOTION_RWX_STORAGE_CLASS"), ("rwo-one-node", ["ReadWriteOnce"], None)],
)
def test_each_overlay_patches_both_claims_of_the_base_and_nothing_else(overlay, modes, storage_class):
    folder = DEPLOY / "overlays" / overlay
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert kustomization == {
        **KUSTOMIZATION,
        "resources": ["../../base"],
        "patches": [{"path": "access-mode.yaml", "target": {"kind": "PersistentVolumeClaim"}}],
    }
    base, rendered = _claims(kustomize(DEPLOY / "base")), _claims(kustomize(folder))
    assert set(rendered) == set(base)
    for name, spec in rendered.items():
        assert spec["accessModes"] == modes, name
        assert spec.get("storageClassName") == storage_class, name  # rwo-one-node: the cluster's default class
        assert {k: v for k, v in spec.items() if k not in ("accessModes", "storageClassName")} == base[name]
    if storage_class:  # a placeholder the documented sed replaces, never a class name that could exist
        assert storage_class in PLACEHOLDERS and not re.fullmatch(r"[a-z0-9.-]+", storage_class)
        comments = (folder / "access-mode.yaml").read_text()
        assert all(example in comments for example in ("efs-sc", "standard-rwx", "azurefile-csi"))


def test_the_documentation_says_how_to_choose_the_overlay_and_what_one_node_demands(repo_root):
    section = _kubeflow_section(repo_root)
    runbook = section[section.index("## Runbook: from an empty cluster") :]
    assert "kubectl kustomize deploy/kubernetes/overlays/rwx | sed" in runbook
    assert "IMAGE_EMOTION_RWX_STORAGE_CLASS" in runbook
    assert "kubectl -n $NS apply -k deploy/kubernetes/overlays/rwo-one-node" in runbook
    # the one-node mode's constraint, said plainly, and what keeps fewer pods wanting the volumes at once
    prose = " ".join(section.split())
    for phrase in ("ReadWriteOnce", "one node", "Pending", "Multi-Attach", "--parallelism 1", "PodNodeSelector"):
        assert phrase in prose, phrase
    rwo = " ".join((DEPLOY / "overlays/rwo-one-node/kustomization.yaml").read_text().split())
    for phrase in ("one node", "Pending", "--parallelism 1"):
        assert phrase in rwo, phrase


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
    runbook = section[section.index("## Runbook: from an empty cluster") :]
    order = [runbook.index(f"deploy/kubernetes/{name}") for name in ("overlays/", "volume-permissions", "load-data")]
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
    (uri_host,) = set(re.findall(r"--mlflow-tracking-uri http://([^/\s]+)", section))
    assert is_allowed_host_header(hosts, uri_host)
    assert "--allowed-hosts" in section


@pytest.mark.parametrize("name", ["load-data.yaml", "volume-permissions.yaml"])
def test_the_one_off_jobs_get_no_istio_sidecar(name):
    (job,) = _documents(name)  # Kubeflow profile namespaces inject one, and a Job with a sidecar never completes
    assert job["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"


def test_the_readme_names_the_kfp_backend_the_pipeline_needs(repo_root):
    section = _kubeflow_section(repo_root)
    assert "Kubeflow Pipelines **2.17.0 or later**" in section and "#13437" in section


def _containers(name: str) -> list[dict]:
    return [
        c
        for d in _documents(name)
        if d["kind"] in ("Job", "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


@pytest.mark.parametrize("name", [p.relative_to(DEPLOY).as_posix() for p in object_files()])  # base/ too
def test_no_image_comes_from_docker_hub_by_tag(name):
    for container in _containers(name):
        image = container["image"]
        if image == "IMAGE_EMOTION_CPU_IMAGE":  # the project's CPU image by digest, put in by the header's sed
            continue
        host = image.split("/")[0] if "/" in image else ""
        docker_hub = not ("." in host or ":" in host or host == "localhost")
        assert not docker_hub or "@sha256:" in image, f"{name}: {image} is a Docker Hub tag, which can move"


def _load_data() -> tuple[dict, str, list[str]]:
    (container,) = _containers("load-data.yaml")
    assert container["command"] == ["python3", "-c"]
    script, *args = container["args"]
    return container, script, args


def test_the_load_data_job_runs_the_projects_cpu_image_with_the_s3_secret():
    container, _, args = _load_data()
    assert container["image"] == "IMAGE_EMOTION_CPU_IMAGE"  # as volume-permissions.yaml's, pinned by digest
    assert args == ["<bucket>", "image-emotion/data", f"{cluster.DATA_MOUNT}/data"]  # the repository's data/ tree
    assert container["envFrom"] == [{"secretRef": {"name": cluster.DEFAULTS.s3_secret}}]  # AWS_ENDPOINT_URL too
    assert {"name": "HOME", "value": "/tmp"} in container["env"]
    header = (DEPLOY / "load-data.yaml").read_text().split("apiVersion:")[0]
    assert 'sed "s|IMAGE_EMOTION_CPU_IMAGE|$CPU_IMAGE|" deploy/kubernetes/load-data.yaml' in header


def test_the_load_data_script_copies_new_and_changed_objects_and_keeps_the_rest(tmp_path, monkeypatch, capsys):
    import sys

    import boto3
    from moto import mock_aws

    _, script, _ = _load_data()
    credentials = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in credentials.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    target = tmp_path / "volume" / "data"

    def run(prefix: str = "image-emotion/data") -> str:
        monkeypatch.setattr(sys, "argv", ["-c", "bucket", prefix, str(target)])
        exec(compile(script, "load-data.yaml", "exec"), {"__name__": "__main__"})
        return capsys.readouterr().out

    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bucket")
        objects = {"raw/FI/amusement/a.jpg": b"aaaa", "raw/FI/anger/b.jpg": b"bb", "raw/": b""}  # a folder marker
        for key, body in objects.items():
            s3.put_object(Bucket="bucket", Key=f"image-emotion/data/{key}", Body=body)
        s3.put_object(Bucket="bucket", Key="elsewhere/c.jpg", Body=b"c")  # outside the prefix
        assert "2 copied, 0 already there" in run()
        assert (target / "raw/FI/amusement/a.jpg").read_bytes() == b"aaaa"
        assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
            "raw/FI/amusement/a.jpg", "raw/FI/anger/b.jpg"
        ]  # fmt: skip
        assert "0 copied, 2 already there" in run()  # a rerun copies nothing
        s3.put_object(Bucket="bucket", Key="image-emotion/data/raw/FI/anger/b.jpg", Body=b"bbb")  # changed
        assert "1 copied, 1 already there" in run()
        assert (target / "raw/FI/anger/b.jpg").read_bytes() == b"bbb"
        with pytest.raises(SystemExit, match="nothing under s3://bucket/nothing/"):
            run("nothing")
        s3.put_object(Bucket="bucket", Key="image-emotion/data/../../escape.sh", Body=b"x")
        with pytest.raises(SystemExit, match="would land outside"):
            run()
    assert not (tmp_path / "escape.sh").exists()
