"""Every Kubernetes object under deploy/ and every pod template the code builds, validated offline against the
OpenAPI schema of one Kubernetes release in strict mode (an unknown field is an error, as with the API server's
``--validate=strict``), with kubernetes-validate's bundled JSON schemas. The sed placeholders are replaced by
plausible values first, and the kustomize overlays are rendered the way ``kubectl kustomize`` does (``kustomize``
below; checked against kubectl itself where it is installed), so the claims a platform engineer applies are the
ones validated. Sizes, access modes and what the overlays choose are tests/test_deploy.py's."""

from __future__ import annotations

import copy
import importlib.resources
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from image_emotion.kubeflow.cluster import ClusterDefaults
from image_emotion.kubeflow.trainjob import node_pod_template, train_job

DEPLOY = Path(__file__).resolve().parents[1] / "deploy/kubernetes"
OVERLAYS = ("rwx", "rwo-one-node")
# The one Kubernetes release everything is validated against: the newest kubernetes-validate (pinned in the dev
# extra) bundles. A newer package that bundles a newer release fails test_the_schemas_are_the_newest_bundled_...
KUBERNETES_VERSION = "1.37.0"
# What the documented seds put in place of each placeholder (the project's CPU image by digest, the namespace of a
# Kubeflow profile, a ReadWriteMany storage class)
PLACEHOLDERS = {
    "IMAGE_EMOTION_CPU_IMAGE": "registry.example.com/ml/image-emotion@sha256:" + "0" * 64,
    "IMAGE_EMOTION_NAMESPACE": "kubeflow-user",
    "IMAGE_EMOTION_RWX_STORAGE_CLASS": "efs-sc",
}
# At least this many: a deleted manifest (or an overlay that renders nothing) is noticed. Today: 10 objects in the
# six sed/apply files, the 2 claims of base/, the 2 claims of each of the 2 overlays; the node pod template of a
# one-pod TrainJob and of a three-pod one.
MIN_OBJECTS, MIN_TEMPLATES = 16, 2
KUSTOMIZATION = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}


def _documents(text: str) -> list[Any]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def _json_patch(document: dict, operations: list[dict]) -> None:
    """RFC 6902 ``add``, ``replace`` and ``remove`` on ``document``, in place (the operations kustomize's JSON
    patches take; ``test`` and ``move`` are not used here and refused)."""
    for operation in operations:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]]
        node = document
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        op = operation["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op == "add":
                node.insert(index, copy.deepcopy(operation["value"]))
            elif op == "replace":
                node[index] = copy.deepcopy(operation["value"])
            elif op == "remove":
                del node[index]
            else:
                raise ValueError(f"JSON patch op {op!r} is not rendered here")
        elif op == "add":
            node[last] = copy.deepcopy(operation["value"])
        elif op == "replace":
            if last not in node:
                raise KeyError(f"replace {operation['path']}: nothing there (kustomize refuses it too)")
            node[last] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del node[last]
        else:
            raise ValueError(f"JSON patch op {op!r} is not rendered here")


def _selected(document: dict, target: dict) -> bool:
    """Whether a patch's ``target`` (kind, name) selects ``document``."""
    found = {"kind": document["kind"], "name": document["metadata"].get("name")}
    return all(found[key] == value for key, value in target.items())


def kustomize(directory: Path) -> list[dict]:
    """The objects ``kubectl kustomize directory`` prints, for what these kustomizations use: ``resources`` (files
    in or below the folder, or folders of other kustomizations) and ``patches`` of JSON-patch operations on the
    objects their ``target`` selects by kind (and name). Any other field is an error here, so a kustomization that
    grows one fails this renderer instead of being rendered wrongly."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert {k: kustomization.get(k) for k in KUSTOMIZATION} == KUSTOMIZATION, directory
    unknown = set(kustomization) - {*KUSTOMIZATION, "resources", "patches"}
    assert not unknown, f"{directory}: kustomization fields {sorted(unknown)} are not rendered by this test"
    objects: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects += kustomize(path)
        else:  # kustomize's load restrictor: a file resource lies in or below the kustomization's folder
            assert path.is_relative_to(directory.resolve()), f"{directory}: {entry} is outside the kustomization"
            objects += _documents(path.read_text())
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path", "target"} and set(patch["target"]) <= {"kind", "name"}, patch
        operations = yaml.safe_load((directory / patch["path"]).read_text())
        assert isinstance(operations, list), f"{patch['path']}: a JSON patch (a list of operations)"
        targets = [o for o in objects if _selected(o, patch["target"])]
        assert targets, f"{directory}: patch {patch['path']} selects no object"
        for target in targets:
            _json_patch(target, operations)
    return objects


def substituted(text: str) -> str:
    """``text`` with every placeholder replaced, as the documented seds do."""
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    return text


def _kustomizations() -> list[Path]:
    return sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))


def object_files() -> list[Path]:
    """The YAML files under deploy/ that hold Kubernetes objects: all but kustomizations and their patches."""
    patches = {
        (folder / patch["path"]).resolve()
        for folder in _kustomizations()
        for patch in yaml.safe_load((folder / "kustomization.yaml").read_text()).get("patches", [])
    }
    return [p for p in sorted(DEPLOY.rglob("*.yaml")) if p.name != "kustomization.yaml" and p.resolve() not in patches]


def deployed_objects() -> list[tuple[str, dict]]:
    """(where, object) for every object of every object file, and every object each overlay renders (a
    placeholder replaced after rendering, as ``kubectl kustomize ... | sed ...`` does)."""
    found = [
        (path.relative_to(DEPLOY).as_posix(), document)
        for path in object_files()
        for document in _documents(substituted(path.read_text()))
    ]
    for overlay in OVERLAYS:
        rendered = substituted(yaml.safe_dump_all(kustomize(DEPLOY / "overlays" / overlay)))
        found += [(f"overlays/{overlay} (rendered)", document) for document in _documents(rendered)]
    return found


def built_templates() -> list[tuple[str, dict]]:
    """(where, pod template) of the TrainJobs kubeflow/trainjob.py builds: one pod, and three pods of two GPUs on
    selected nodes, each the core/v1 PodTemplateSpec of its nodes as the runtime renders it
    (``trainjob.node_pod_template``)."""
    image = PLACEHOLDERS["IMAGE_EMOTION_CPU_IMAGE"].replace("image-emotion@", "image-emotion-cuda@")
    jobs = {
        "one pod": train_job("ft-7", "finetune-detector", image, "run-7", mlflow_tracking_uri="http://m:5000"),
        "three pods": train_job(
            "metric-run-7", "train-metric", image, "run-7", workers=3, gpus_per_worker=2,
            mlflow_tracking_uri="http://mlflow.mlflow.svc:5000", overrides=["metric.epochs=100"],
            cluster=ClusterDefaults(gpu_node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
        ),
    }  # fmt: skip
    return [(f"TrainJob ({name}) node", node_pod_template(job)) for name, job in jobs.items()]


def as_pod_template(name: str, template: dict) -> dict:
    """``template`` inside a core/v1 PodTemplate, the API object whose ``template`` is a PodTemplateSpec: its
    schema is then the one the API server checks a Job's, a Deployment's or a JobSet's template with."""
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}


def validate(document: dict) -> str:
    """The Kubernetes minor version ``document`` was validated against (strict); ValidationError if invalid."""
    return kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt (a schema fetched from the web) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during schema validation: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_every_deployed_object_and_built_pod_template_is_valid_kubernetes_strictly(no_network, record_property):
    objects, templates = deployed_objects(), built_templates()
    for where, document in objects:
        assert validate(document) == _major_minor(KUBERNETES_VERSION), (where, document["kind"])
    for where, template in templates:
        assert validate(as_pod_template("t", template)) == _major_minor(KUBERNETES_VERSION), where
    summary = (
        f"{len(objects)} objects ({len(object_files())} files, {len(OVERLAYS)} overlays rendered) and "
        f"{len(templates)} pod templates valid against Kubernetes {KUBERNETES_VERSION}, strict"
    )
    print(summary)
    record_property("deploy_schemas", summary)
    assert len(objects) >= MIN_OBJECTS and len(templates) >= MIN_TEMPLATES, summary
    # every object file holds objects, and no file under deploy/ is left out unnoticed
    assert {where for where, _ in objects} >= {p.relative_to(DEPLOY).as_posix() for p in object_files()}
    assert {p.name for p in object_files()} >= {
        "load-data.yaml", "mlflow.yaml", "namespace.yaml", "secrets.example.yaml", "volume-permissions.yaml",
        "volumes.yaml",
    }  # fmt: skip
    kinds = {document["kind"] for _, document in objects}
    assert kinds >= {"Job", "Deployment", "Service", "Namespace", "LimitRange", "Secret", "PersistentVolumeClaim"}


def test_the_schemas_are_the_newest_bundled_read_from_the_installed_package():
    assert kubernetes_validate.latest_version() == KUBERNETES_VERSION  # bump the constant with the package
    schemas = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    strict = schemas / f"v{KUBERNETES_VERSION}-local-strict"
    assert (strict / "_definitions.json").is_file() and (strict / "podtemplate-v1.json").is_file()
    # strict: every object schema refuses properties it does not name, as the API server's strict validation
    assert '"additionalProperties": false' in (strict / "persistentvolumeclaim-v1.json").read_text()


def _misspelled(document: dict, path: str, wrong: str) -> dict:
    """A copy of ``document`` with the field at ``path`` (dotted; list items by index) renamed ``wrong``."""
    copied = copy.deepcopy(document)
    *parents, last = path.split(".")
    node = copied
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[wrong] = node.pop(last)
    return copied


def _object(where: str, kind: str) -> dict:
    """The first object of ``kind`` from ``where`` (a file under deploy/ or a rendered overlay)."""
    return next(d for w, d in deployed_objects() if w == where and d["kind"] == kind)


@pytest.mark.parametrize(
    ("where", "path", "wrong"),
    [
        ("load-data.yaml", "spec.template.spec.containers.0.volumeMounts", "volumeMount"),
        ("load-data.yaml", "spec.activeDeadlineSeconds", "activeDeadlineSecond"),
        ("overlays/rwx (rendered)", "spec.accessModes", "accessMode"),
        ("overlays/rwo-one-node (rendered)", "metadata.labels", "label"),
        ("TrainJob (three pods) node", "template.spec.securityContext", "securityContexts"),
    ],
)
def test_a_misspelled_field_is_refused_which_the_loose_schema_lets_pass(where, path, wrong, no_network):
    if where.startswith("TrainJob"):
        (template,) = [t for w, t in built_templates() if w == where]
        document = as_pod_template("t", template)
    else:
        document = _object(where, "PersistentVolumeClaim" if "overlays" in where else "Job")
    bad = _misspelled(document, path, wrong)
    with pytest.raises(kubernetes_validate.ValidationError, match=rf"'{wrong}' was unexpected"):
        validate(bad)
    # the default (not strict) schema accepts it: the strictness is what catches the typo
    assert kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=False) == _major_minor(KUBERNETES_VERSION)


def test_a_wrong_type_or_a_missing_required_field_is_refused():
    job = _object("volume-permissions.yaml", "Job")
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["activeDeadlineSeconds"] = "3600"  # an integer in the API
    with pytest.raises(kubernetes_validate.ValidationError, match="is not of type"):
        validate(wrong_type)
    nameless = copy.deepcopy(job)
    del nameless["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(kubernetes_validate.ValidationError, match="'name' is a required property"):
        validate(nameless)


def test_every_placeholder_in_deploy_has_a_plausible_value():
    for path in sorted(DEPLOY.rglob("*.yaml")):
        text = path.read_text()
        assert set(re.findall(r"IMAGE_EMOTION_[A-Z_]+", text)) <= set(PLACEHOLDERS), path
        assert not re.search(r"IMAGE_EMOTION_[A-Z_]+", substituted(text)), path


def test_the_renderer_applies_json_patches_as_rfc_6902_says(tmp_path):
    document = {"spec": {"accessModes": ["ReadWriteOnce"], "items": [1, 3]}, "a/b": {"c~d": 1}}
    _json_patch(document, [
        {"op": "replace", "path": "/spec/accessModes", "value": ["ReadWriteMany"]},
        {"op": "add", "path": "/spec/storageClassName", "value": "x"},
        {"op": "add", "path": "/spec/items/1", "value": 2},
        {"op": "add", "path": "/spec/items/-", "value": 4},
        {"op": "remove", "path": "/a~1b/c~0d"},
    ])  # fmt: skip
    assert document == {"spec": {"accessModes": ["ReadWriteMany"], "items": [1, 2, 3, 4], "storageClassName": "x"},
                        "a/b": {}}  # fmt: skip
    with pytest.raises(KeyError):
        _json_patch(document, [{"op": "replace", "path": "/spec/volumeMode", "value": "Block"}])
    # a field this renderer does not apply is an error, not silently skipped
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({**KUSTOMIZATION, "namePrefix": "x-"}))
    with pytest.raises(AssertionError, match="namePrefix"):
        kustomize(tmp_path)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (the renderer stands in)")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_renderer_prints_what_kubectl_kustomize_prints(overlay):
    printed = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert printed.returncode == 0, printed.stderr

    def key(document: dict) -> tuple[str, str]:
        return document["kind"], document["metadata"]["name"]

    expected = sorted(_documents(printed.stdout), key=key)
    assert sorted(kustomize(DEPLOY / "overlays" / overlay), key=key) == expected
