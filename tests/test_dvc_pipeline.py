"""End to end: the real `dvc repro` of the whole graph (tiny params), incremental, param-sensitive,
and its outputs pushed to and pulled from an S3 remote (a moto server on loopback)."""

import json
import os
import shutil
import subprocess

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer
from tiny import write_tiny_params

pytestmark = pytest.mark.e2e
STAGES = [
    "make_embedded",
    "make_embedded_transfer",
    "prepare",
    "prepare_transfer",
    "finetune_detector",
    "extract_regions",
    "train_classifier",
    "transfer_cv",
    "evaluate",
    "register",
]


def _dvc(cwd, *args):
    proc = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _ran(out: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in out]


@pytest.fixture(scope="module")
def project(tmp_path_factory, repo_root, mlflow_uri):
    root = tmp_path_factory.mktemp("dvcproj")
    shutil.copy(repo_root / "dvc.yaml", root / "dvc.yaml")
    write_tiny_params(root / "params.yaml")
    shutil.copytree(repo_root / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "init", "-q")
    return root


@pytest.fixture(scope="module")
def s3():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="emotion")
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_repro_runs_the_graph_then_noop_then_only_what_lambda_changes(project, mlflow_uri):
    first = _dvc(project, "repro")
    assert _ran(first) == STAGES
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    assert evaluation["num_test_images"] > 0
    registered = json.loads((project / "metrics/register.json").read_text())
    assert registered["version"] >= 1 and registered["model_name"] == "image-emotion"
    assert (project / "plots/regions.png").is_file()

    assert _ran(_dvc(project, "repro")) == []

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["classifier"]["lambdas"] = [0.0, 0.3, 1.0]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _dvc(project, "repro")
    assert _ran(third) == ["train_classifier", "transfer_cv", "evaluate", "register"]
    assert [r["lambda"] for r in json.loads((project / "metrics/lambda_sweep.json").read_text())] == [0.0, 0.3, 1.0]


def test_outputs_round_trip_through_an_s3_remote(project, s3):
    _dvc(project, "remote", "add", "-d", "store", "s3://emotion/dvc")
    _dvc(project, "remote", "modify", "store", "endpointurl", s3)
    _dvc(project, "push")
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3).list_objects_v2(Bucket="emotion")["Contents"]]
    assert any(k.startswith("dvc/files/md5/") for k in keys)
    manifest = (project / "data/prepared/manifest.csv").read_bytes()
    shutil.rmtree(project / "data/prepared")
    shutil.rmtree(project / "models")
    shutil.rmtree(project / ".dvc/cache")
    _dvc(project, "pull")
    assert (project / "data/prepared/manifest.csv").read_bytes() == manifest
    assert (project / "models/detector/detector.pt").is_file()
    assert _ran(_dvc(project, "repro")) == []


def test_mlflow_artifacts_go_to_s3(s3, tmp_path, monkeypatch):
    import mlflow

    from image_emotion import tracking

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = {"mlflow": {"experiment": "s3-artifacts", "artifact_location": "s3://emotion/mlflow"}}
    with tracking.stage_run(params, "evaluate"):
        mlflow.log_text("hello", "plots/note.txt")
        run_id = mlflow.active_run().info.run_id
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3).list_objects_v2(Bucket="emotion", Prefix="mlflow/")["Contents"]
    ]
    assert any(k.endswith(f"{run_id}/artifacts/plots/note.txt") for k in keys)
