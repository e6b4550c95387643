"""What a kfp component does before and around calling a stage: the config, MLflow identity, artifact files."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections import namedtuple
from pathlib import Path
from typing import Any

import yaml

from image_emotion.config import Config, validate
from image_emotion.data.synthetic import generate
from image_emotion.errors import ConfigError
from image_emotion.kubeflow import cluster
from image_emotion.kubeflow.cluster import RUN_ID_ENV

LOCAL_STORES = ("", "sqlite", "file")  # tracking URI schemes whose store would live and die inside one pod


def setup(params_yaml: str, mlflow_tracking_uri: str, data_dir: str) -> Config:
    """The validated config of the pipeline run; MLflow pointed at the pipeline's tracking server and run; the
    working directory ``data_dir`` (the data volume in a pod), where relative dataset roots and weights resolve.

    In a pod the pipeline run's id comes from the pod's label (``cluster.RUN_ID_ENV``) and a tracking URI that
    is empty, ``sqlite:`` or a file path is an error: that store would be deleted with the pod."""
    config = validated(params_yaml)
    if mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    if os.environ.get(RUN_ID_ENV):
        os.environ["IMAGE_EMOTION_PIPELINE_RUN"] = os.environ[RUN_ID_ENV]
    if in_cluster():  # the URI tracking.runs will use: the environment's, else params.yaml's
        check_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or config.mlflow.tracking_uri or "")
        check_work_volume()  # before hours of GPU work whose checkpoints could not be written
    if data_dir:
        if not Path(data_dir).is_dir():
            raise ConfigError(
                f"data directory {data_dir} does not exist: mount the data volume there (pipeline parameter "
                "data_pvc names its PersistentVolumeClaim) or pass data_dir"
            )
        os.chdir(data_dir)
    return config


def validated(params_yaml: str) -> Config:
    """The run's params (the pipeline parameter ``params_yaml``) as a validated ``Config``."""
    return validate(yaml.safe_load(params_yaml) or {}, "params_yaml")


def in_cluster() -> bool:
    """Inside a Kubernetes pod (kubelet sets this variable in every container)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def check_tracking_uri(uri: str) -> None:
    """A tracking URI that outlives the pod (an MLflow server, a database), else a one-line ``ConfigError``."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in LOCAL_STORES or len(scheme) == 1:  # no scheme, sqlite:, file:, or a Windows drive letter
        raise ConfigError(
            f"MLflow tracking URI {uri or '(empty)'} would keep runs and models inside this pod, deleted with it: "
            "pass the pipeline parameter mlflow_tracking_uri=http://<mlflow server> (credentials in the secret "
            "named by mlflow_secret)"
        )


def check_work_volume(root: str | Path | None = None) -> None:
    """The work volume (``root``, default ``cluster.WORK_MOUNT``; nothing to check where no such folder is) must be
    writable by this process: the pods run as uid 10001 and a fresh volume belongs to root, which kfp-kubernetes
    cannot change (it sets no fsGroup). Else a one-line ``ConfigError`` naming the Job that fixes the volume."""
    folder = Path(root or cluster.WORK_MOUNT)
    if not folder.is_dir():
        return
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
    except OSError as exc:
        raise ConfigError(
            f"the work volume {folder} is not writable for uid {os.getuid()} ({exc.strerror or exc}): run the Job "
            f"{cluster.PERMISSIONS_JOB} once in this namespace ({cluster.PERMISSIONS_MANIFEST}, applied as its "
            f"header says), which makes the volumes writable for uid/gid {cluster.UID}, then retry the run"
        ) from None
    os.close(handle)
    os.unlink(probe)


def lineage_role(role: str) -> str:
    """The dataset role that ``tracking.lineage`` (and ``data_versions``) names the data of ``prepare_op``'s
    ``role``: ``detector`` -> ``detector_data``, ``main`` -> ``data``, ``generative:<name>`` as it is, a transfer
    set's name -> ``transfer:<name>``."""
    if role == "main":
        return "data"
    if role == "detector":
        return "detector_data"
    if role.startswith(GENERATIVE_ROLE):
        return role
    return f"transfer:{role}"


def cache_version(data_versions: dict[str, Any], role: str) -> str:
    """The data version the prepare step of ``role`` is cached under: its entry in ``data_versions`` (the pipeline
    parameter: lineage role -> content version), so the same data hit kfp's cache and new data miss it; when the
    role has none (unversioned data), a version of its own for every call, so that step is never served a
    manifest of data it cannot tell apart from the data now on the volume."""
    version = str((data_versions or {}).get(lineage_role(role)) or "")
    return version or f"unversioned-{uuid.uuid4().hex}"


def checkpoint_path(checkpoint_root: str, step: str) -> Path:
    """``<checkpoint_root>/<pipeline run>/<step>/last.pt``: the same file for every retry of one run's step (the
    work volume in a pod), so a retried pod resumes instead of starting over."""
    run = os.environ.get("IMAGE_EMOTION_PIPELINE_RUN")
    if not run:
        raise ConfigError(f"no pipeline run id (${RUN_ID_ENV}): run the component inside a kfp pipeline run")
    return Path(checkpoint_root) / run / step / "last.pt"


GENERATIVE_ROLE = "generative:"  # prepare_op's role of a set of generative.sets: "generative:<name>"


def set_roles(config: Config, sets: str) -> list[str]:
    """``prepare_op``'s roles of the ``transfer`` sets (their names) or of the ``generative`` sets
    (``generative:<name>``)."""
    if sets == "transfer":
        return [t.name for t in config.transfer.sets]
    if sets == "generative":
        return [f"{GENERATIVE_ROLE}{s.name}" for s in config.generative.sets]
    raise ConfigError(f"sets must be transfer or generative, got {sets!r}")


def role_config(config: Config, role: str) -> Config:
    """The config that ``prepare`` of ``role`` sees, as dvc.yaml's prepare stages set it: ``data.dataset`` and
    ``data.root`` are those of ``detector`` (detector_data), ``main`` (data), ``generative:<name>`` (a set of
    ``generative.sets``) or the transfer set ``role``."""
    if role == "main":
        return config
    if role == "detector":
        ref = config.detector_data
    elif role.startswith(GENERATIVE_ROLE):
        by_name = {s.name: s for s in config.generative.sets}
        name = role.removeprefix(GENERATIVE_ROLE)
        if name not in by_name:
            raise ConfigError(f"no set {name!r} in generative.sets ({', '.join(by_name)})")
        ref = by_name[name]
    else:
        by_name = {t.name: t for t in config.transfer.sets}
        if role not in by_name:
            raise ConfigError(f"no transfer set {role!r} in transfer.sets ({', '.join(by_name)})")
        ref = by_name[role]
    return config.with_values({"data.dataset": ref.dataset, "data.root": str(ref.root)})


def draw_if_synthetic(config: Config, out: Path) -> Config:
    """For a synthetic ``data`` role: draw its set (the last part of ``data.root`` names it in
    ``synthetic.sets``) into ``out`` and point ``data.root`` there; another dataset's root made absolute."""
    if config.data.dataset != "synthetic":  # a real set: its root absolute, so every pod that mounts the data
        return config.with_values({"data.root": str(Path(config.data.root).resolve())})  # volume resolves it
    generate(out, config.synthetic, Path(config.data.root).name)
    # relative: ``prepare`` stores it relative to the manifest, so the images travel inside the artifact
    return config.with_values({"data.root": os.path.relpath(out)})


def draw_objects(config: Config, out: Path) -> Config:
    """Draw the synthetic objects set of ``pretrain.root`` into ``out`` and point ``pretrain.root`` there."""
    generate(out, config.synthetic, Path(config.pretrain.root).name)
    return config.with_values({"pretrain.root": str(out)})


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def collect_transfer(results: list[Any], out: Path) -> None:
    """The collected transfer results (kfp ``Metrics`` artifacts whose files are ``transfer_cv``'s summaries) as
    ``out/<set>.json``, the layout of dvc.yaml's ``metrics/transfer/``."""
    for result in results:
        summary = read_json(result.path)
        write_json(Path(out) / f"{summary['set']}.json", summary)


def link_generative_sets(datasets: list[Any], out: Path) -> Path:
    """The collected ``prepare_op`` artifacts of ``generative.sets`` as ``out/<name>`` (links to each one's
    ``prepared`` directory, named by the role each recorded): the layout of ``data/prepared/generative``."""
    out.mkdir(parents=True, exist_ok=True)
    for dataset in datasets:
        role = (Path(dataset.path) / "role.txt").read_text().strip()
        (out / role.removeprefix(GENERATIVE_ROLE)).symlink_to(Path(dataset.path) / "prepared")
    return out


def log_to_kfp(metrics_artifact: Any, values: dict[str, Any]) -> None:
    """Every finite number of ``values`` (flattened) as a kfp Metrics entry."""
    from image_emotion.tracking.runs import flatten

    for key, value in flatten(values).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value == value and abs(value) != float("inf"):
            metrics_artifact.log_metric(key, float(value))


RegisterOutputs = namedtuple("RegisterOutputs", ["version", "promoted"])  # the register components' outputs


def register_outputs(result: dict[str, Any]) -> RegisterOutputs:
    """A registration record (``register_and_promote``'s) as the register components' kfp outputs."""
    return RegisterOutputs(int(result["version"]), bool(result["promoted"]))
