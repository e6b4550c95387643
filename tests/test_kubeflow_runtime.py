"""What a component does in a pod before its stage: the tracking URI must outlive the pod, the run id comes from
the pod's label, relative data paths resolve on the data volume, and a retried training pod resumes from the
checkpoint on the work volume."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny import detector_inputs, tiny_config, wait_for_checkpoint

from image_emotion.errors import ConfigError
from image_emotion.kubeflow import cluster, runtime
from image_emotion.stages import prepare


@pytest.fixture
def pod_env(monkeypatch, tmp_path):
    """This process as a pod would be: inside Kubernetes, the run id label as env; every variable and the working
    directory ``setup`` changes restored after the test."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv(cluster.RUN_ID_ENV, "run-abc")
    for name in ("MLFLOW_TRACKING_URI", "IMAGE_EMOTION_PIPELINE_RUN"):  # setup sets them: unset again after
        monkeypatch.setenv(name, "recorded")  # (delenv of an absent variable would not restore its absence)
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


PARAMS = yaml.safe_dump(tiny_config().to_dict())


@pytest.mark.parametrize("uri", ["", "sqlite:///mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns", "mlruns", "C:\\runs"])
def test_a_tracking_store_that_dies_with_the_pod_is_refused(pod_env, tmp_path, uri):
    with pytest.raises(ConfigError, match="mlflow_tracking_uri=http://") as caught:
        runtime.setup(PARAMS, uri, str(tmp_path))
    assert "\n" not in str(caught.value) and (uri or "(empty)") in str(caught.value)


@pytest.mark.parametrize("uri", ["http://mlflow.kubeflow:5000", "https://mlflow.example.com", "postgresql://db/m"])
def test_a_server_uri_is_taken_and_the_run_id_comes_from_the_pod_label(pod_env, tmp_path, uri):
    data = tmp_path / "volume"
    data.mkdir()
    config = runtime.setup(PARAMS, uri, str(data))
    assert os.environ["MLFLOW_TRACKING_URI"] == uri and config.mlflow.experiment == "image-emotion"  # params_yaml's
    assert os.environ["IMAGE_EMOTION_PIPELINE_RUN"] == "run-abc"  # one parent run for every pod of the kfp run
    assert Path.cwd() == data  # relative roots and weight paths resolve on the data volume


def test_the_server_uri_may_come_from_the_environment_and_outside_kubernetes_sqlite_is_fine(pod_env, tmp_path):
    pod_env.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")  # e.g. from a ConfigMap
    runtime.setup(PARAMS, "", str(tmp_path))
    pod_env.delenv("KUBERNETES_SERVICE_HOST")
    runtime.setup(PARAMS, f"sqlite:///{tmp_path / 'm.db'}", str(tmp_path))  # kfp.local on a laptop
    assert os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite:")


def test_the_uri_params_yaml_names_is_checked_too(pod_env, tmp_path):
    server = yaml.safe_dump(tiny_config(**{"mlflow.tracking_uri": "http://mlflow:5000"}).to_dict())
    runtime.setup(server, "", str(tmp_path))
    local = yaml.safe_dump(tiny_config(**{"mlflow.tracking_uri": "sqlite:///pod.db"}).to_dict())
    with pytest.raises(ConfigError, match=re.escape("sqlite:///pod.db would keep runs")):
        runtime.setup(local, "", str(tmp_path))


def test_an_unmounted_data_volume_is_a_one_line_error_naming_the_parameter(pod_env, tmp_path):
    with pytest.raises(ConfigError, match=r"data directory .*/nowhere does not exist: mount the data volume.*data_pvc"):
        runtime.setup(PARAMS, "http://mlflow:5000", str(tmp_path / "nowhere"))


def test_a_real_dataset_root_becomes_absolute_and_a_drawn_one_travels_with_the_artifact(pod_env, tmp_path):
    (tmp_path / "data/raw/ArtPhoto").mkdir(parents=True)
    config = tiny_config(**{"data.dataset": "artphoto", "data.root": "data/raw/ArtPhoto"})
    assert runtime.draw_if_synthetic(config, tmp_path / "artifact").data.root == str(tmp_path / "data/raw/ArtPhoto")
    drawn = runtime.draw_if_synthetic(tiny_config(), tmp_path / "artifact/images")
    assert drawn.data.root == "artifact/images" and len(list((tmp_path / "artifact/images").rglob("*.png"))) == 48
    out = tmp_path / "artifact"
    prepare.run(drawn, prepare.PreparePaths(out / "prepared", out / "prepare.json"))
    moved = tmp_path / "elsewhere"  # the consumer pod sees the artifact at another path
    out.rename(moved)
    record = json.loads((moved / "prepared/dataset.json").read_text())
    assert record["root"] == "../images" and (moved / "prepared" / record["root"]).is_dir()


def test_the_checkpoint_of_a_step_is_per_run_on_the_work_volume(pod_env, tmp_path):
    runtime.setup(PARAMS, "http://mlflow:5000", str(tmp_path))
    path = runtime.checkpoint_path("/mnt/image-emotion/work/checkpoints", "finetune_detector")
    assert path == Path("/mnt/image-emotion/work/checkpoints/run-abc/finetune_detector/last.pt")
    pod_env.delenv("IMAGE_EMOTION_PIPELINE_RUN")
    pod_env.delenv(cluster.RUN_ID_ENV)
    with pytest.raises(ConfigError, match="no pipeline run id"):
        runtime.checkpoint_path("/ckpt", "finetune_detector")


RETRY = """
import sys
from kfp import dsl
from image_emotion.kubeflow.components import finetune_detector_op
root, attempt = sys.argv[1], sys.argv[2]
finetune_detector_op(
    open(f"{root}/params.yaml").read(), "", root, f"{root}/work",
    dsl.Dataset(uri=f"{root}/regions"), dsl.Model(uri=f"{root}/objects"),
    dsl.Model(uri=f"{root}/out-{attempt}"), dsl.Metrics(uri=f"{root}/metrics-{attempt}"),
)
"""


@pytest.mark.e2e
def test_a_retried_training_pod_resumes_from_the_work_volume(tmp_path, mlflow_uri):
    """The component's own code, twice in fresh processes with the same run id (as kfp retries a pod): the first
    attempt killed after an epoch, the second resumes from the checkpoint it left on the work volume."""
    config = detector_inputs(tmp_path, tmp_path / "regions/prepared", tmp_path / "objects/detector.pt")
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({**config.to_dict(), "finetune": {**config.to_dict()["finetune"], "epochs": 4}})
    )
    env = {**os.environ, cluster.RUN_ID_ENV: "run-7", "KUBERNETES_SERVICE_HOST": ""}
    checkpoint = tmp_path / "work/run-7/finetune_detector/last.pt"

    first = subprocess.Popen([sys.executable, "-c", RETRY, str(tmp_path), "1"], env=env, stderr=subprocess.PIPE)
    wait_for_checkpoint(checkpoint, first)
    first.send_signal(signal.SIGKILL)  # the node goes away
    first.wait()
    killed_at = torch.load(checkpoint, weights_only=False)["epoch"]
    assert 1 <= killed_at < 4 and not (tmp_path / "out-1/detector.pt").exists()

    second = subprocess.run([sys.executable, "-c", RETRY, str(tmp_path), "2"], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((tmp_path / "out-2/detector.json").read_text())
    assert summary["resumed_from_epoch"] == killed_at and len(summary["loss_per_epoch"]) == 4


def test_a_role_keeps_a_root_with_yaml_syntax_in_it_and_the_sets_come_from_params():
    """Settings reach a component as typed values, not f-strings re-read as YAML: '#' and ': ' stay in a path."""
    odd = "data/sets/#1: art, (v2)"
    config = tiny_config(**{"transfer.sets": f"[{{name: art, dataset: artphoto, root: '{odd}'}}]"})
    assert str(runtime.role_config(config, "art").data.root) == odd
    assert runtime.role_config(config, "art").data.dataset == "artphoto"
    assert runtime.set_roles(config, "transfer") == ["art"]
    assert runtime.set_roles(config, "generative") == ["generative:ekman"]
    with pytest.raises(ConfigError, match="transfer or generative"):
        runtime.set_roles(config, "objects")


def test_a_work_volume_the_pods_user_cannot_write_stops_the_step_naming_the_job(pod_env, tmp_path, monkeypatch):
    """Pods run as uid 10001 and a fresh volume is root's (kfp-kubernetes sets no fsGroup): the first step that
    would checkpoint fails at once, in one line naming the Job that makes the volume writable."""
    work = tmp_path / "work"
    work.mkdir()
    runtime.check_work_volume(work)  # writable: nothing left behind
    assert list(work.iterdir()) == []
    runtime.check_work_volume(tmp_path / "not-mounted")  # no such folder: nothing to check

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")  # as uid 10001 meets a root-owned 0755 volume

    monkeypatch.setattr(runtime.tempfile, "mkstemp", refused)
    with pytest.raises(ConfigError) as caught:
        runtime.check_work_volume(work)
    message = str(caught.value)
    assert "\n" not in message and str(work) in message and "Permission denied" in message
    assert cluster.PERMISSIONS_JOB in message and cluster.PERMISSIONS_MANIFEST in message
    # every component's setup runs the check in a pod, before its stage
    monkeypatch.setattr(cluster, "WORK_MOUNT", str(work))
    with pytest.raises(ConfigError, match=cluster.PERMISSIONS_JOB):
        runtime.setup(PARAMS, "http://mlflow:5000", str(tmp_path))
    pod_env.delenv("KUBERNETES_SERVICE_HOST")  # kfp.local on a laptop: no volume to check
    runtime.setup(PARAMS, "http://mlflow:5000", str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any folder")
def test_a_read_only_work_volume_is_refused_for_real(tmp_path):
    work = tmp_path / "work"
    work.mkdir(mode=0o555)
    try:
        with pytest.raises(ConfigError, match=cluster.PERMISSIONS_JOB):
            runtime.check_work_volume(work)
    finally:
        work.chmod(0o755)
