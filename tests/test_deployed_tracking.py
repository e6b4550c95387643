"""The pipeline against the deployed tracking shape: `mlflow server` on PostgreSQL with S3 (moto) artifacts, started
by `image-emotion tracking-server` as a developer would. Over HTTP: runs, nested runs, metrics, proxied artifacts in
the bucket, registry versions and aliases, lineage; two promotions racing (20 times) leave the better champion; a
retried register makes no second version; the server stopped mid-training fails the stage with one line, keeps the
checkpoint, and a re-run resumes and completes the MLflow run. The stack runs with auth on, as started by default:
no request gets in without the generated credentials, which no output, log or state file but their own 0600 file
holds, and PostgreSQL takes no connection without its password."""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import mlflow
import pandas as pd
import pytest
from tiny import tiny_config, wait_for_checkpoint, write_tiny_params

from image_emotion.files import load_checkpoint
from image_emotion.stages import register, train_classifier
from image_emotion.tracking import registry
from image_emotion.tracking.pyfunc import encode_image_file
from image_emotion.tracking.runs import TrackingUnavailable, stage_run
from image_emotion.tracking.stack import (
    AUTH_CONFIG_FILE,
    CREDENTIALS_FILE,
    TrackingStack,
    free_port,
    is_running,
    load_credentials,
    load_state,
)

pytestmark = pytest.mark.e2e
CLI = [sys.executable, "-m", "image_emotion.cli"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The stack, started and stopped by the CLI (the README's commands); yields its ``TrackingStack``."""
    directory = tmp_path_factory.mktemp("stack") / "tracking"
    port = str(free_port())
    began = time.monotonic()
    started = subprocess.run(
        [*CLI, "tracking-server", "start", "--dir", str(directory), "--port", port],
        capture_output=True,
        text=True,
    )
    assert started.returncode == 0, started.stderr
    print(f"\nstack started in {time.monotonic() - began:.1f} s")
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in started.stdout
    stack = TrackingStack(directory)
    stack.state = load_state(directory)
    stack.started_output = started.stdout  # read by the auth test
    assert stack.state.backend_store_uri.startswith("postgresql+psycopg2://") and stack.state.auth
    yield stack
    began = time.monotonic()
    stopped = subprocess.run([*CLI, "tracking-server", "stop", "--dir", str(directory)], capture_output=True, text=True)
    print(f"stack stopped in {time.monotonic() - began:.1f} s")
    assert stopped.returncode == 0, stopped.stderr
    assert not is_running(stack.state)


@pytest.fixture
def http_uri(stack, monkeypatch) -> str:
    """``$MLFLOW_TRACKING_URI`` is the stack's server for this test, with its credentials (as the first start
    printed them); a refused connection fails at once."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.state.tracking_uri)
    for name, value in load_credentials(stack.directory).client_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    mlflow.set_tracking_uri(stack.state.tracking_uri)
    return stack.state.tracking_uri


def _bucket_keys(stack) -> list[str]:
    keys = load_credentials(stack.directory)  # the stack's own S3 keys (the moto stand-in checks none)
    s3 = boto3.client(
        "s3", endpoint_url=stack.state.s3_endpoint, aws_access_key_id=keys.s3_access_key_id,
        aws_secret_access_key=keys.s3_secret_access_key, region_name="us-east-1",
    )  # fmt: skip
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow-artifacts")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _call(uri: str, path: str, body: dict | None = None, user: tuple[str, str] | None = None) -> tuple[int, dict]:
    """The HTTP status and JSON answer of one REST call (POST with ``body``, else GET), with basic auth when
    ``user``."""
    request = urllib.request.Request(uri + path, data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Content-Type", "application/json")
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(user).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            text = answer.read().decode()
            return answer.status, json.loads(text) if text.startswith("{") else {}
    except urllib.error.HTTPError as e:
        return e.code, {}


def test_the_stack_takes_no_one_without_its_credentials_and_shows_them_nowhere_else(stack):
    import psycopg2

    uri, directory = stack.state.tracking_uri, stack.directory
    credentials = load_credentials(directory)
    admin = (credentials.username, credentials.password)
    create, search = "/api/2.0/mlflow/experiments/create", "/api/2.0/mlflow/experiments/search"
    assert _call(uri, create, {"name": "anonymous"})[0] == 401  # a write without credentials
    assert _call(uri, search, {"max_results": 5})[0] == 401  # a read without credentials
    assert _call(uri, create, {"name": "guessed"}, (credentials.username, "not-the-password"))[0] == 401
    answered, created = _call(uri, create, {"name": "admins"}, admin)
    assert answered == 200
    assert _call(uri, "/health")[0] == 200 and is_running(stack.state)  # the health check needs no credentials

    # another user (made by the admin) may read nothing of the admin's until granted (NO_PERMISSIONS)
    other = ("colleague", "a-long-enough-password")
    assert _call(uri, "/api/2.0/mlflow/users/create", {"username": other[0], "password": other[1]}, admin)[0] == 200
    admins = f"/api/2.0/mlflow/experiments/get?experiment_id={created['experiment_id']}"
    assert _call(uri, admins, user=admin)[0] == 200
    assert _call(uri, admins, user=other)[0] == 403
    assert _call(uri, create, {"name": "colleagues"}, other)[0] == 200  # their own, theirs to manage

    # the secrets: their own file only, owner-only; not in the start output (but the client's password, once),
    # not in `status`, not in stack.json, the auth config or the logs
    for name in (CREDENTIALS_FILE, AUTH_CONFIG_FILE):
        assert (directory / name).stat().st_mode & 0o777 == 0o600, name
    status = subprocess.run(
        [*CLI, "tracking-server", "status", "--dir", str(directory)], capture_output=True, text=True
    )
    assert status.returncode == 0 and f"{uri}: up (" in status.stdout, status.stderr
    printed = stack.started_output
    assert printed.count(credentials.password) == 1
    assert f"export MLFLOW_TRACKING_PASSWORD={credentials.password}" in printed
    assert f"export MLFLOW_TRACKING_URI={uri}\n" in printed  # no user:password@ in the URI
    files = [p for p in directory.iterdir() if p.is_file() and p.name != CREDENTIALS_FILE]
    assert {"stack.json", AUTH_CONFIG_FILE, "mlflow-server.log", "s3.log"} <= {p.name for p in files}
    texts = {"status": status.stdout + status.stderr, "start": printed.replace(credentials.password, "")}
    texts |= {p.name: p.read_text(errors="replace") for p in files}
    texts["postgres log"] = (directory / "pgdata/log").read_text(errors="replace")
    for secret in credentials.secrets:
        assert not [where for where, text in texts.items() if secret in text]
    assert "testing" not in (credentials.s3_access_key_id, credentials.s3_secret_access_key)

    # PostgreSQL: no connection without the password (the server has it as PGPASSWORD, not in its URI)
    libpq = stack.state.backend_store_uri.replace("postgresql+psycopg2://", "postgresql://")
    nopass = str(directory / "no-pgpass")  # no ~/.pgpass either
    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(libpq, passfile=nopass)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(libpq, password="not-the-password", passfile=nopass)
    psycopg2.connect(libpq, password=credentials.postgres_password).close()


def test_stages_track_runs_artifacts_and_the_registry_over_http(tiny_run, stack, http_uri, tmp_path):
    work, config = tiny_run
    config = config.with_overrides(["mlflow.experiment=over-http", "register.model_name=http-emotion"])
    sweep = train_classifier.run(
        config,
        train_classifier.ClassifierPaths(
            work / "prepared/main", work / "features/main", tmp_path / "classifier", tmp_path / "sweep.json",
            tmp_path / "ablation.json", tmp_path / "classifier.json",
        ),
    )  # fmt: skip
    registering = register.RegisterPaths(
        work / "prepared/main", work / "models/detector.pt", tmp_path / "classifier/head.pt",
        work / "metrics/evaluate.json", tmp_path / "register.json",
    )  # fmt: skip
    result = register.run(config, registering)
    assert result["promoted"] and result["version"] == 1

    client = mlflow.MlflowClient(http_uri)
    experiment = client.get_experiment_by_name("over-http")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied, not a local path
    runs = client.search_runs([experiment.experiment_id], max_results=200)
    by_stage = {r.data.tags.get("stage"): r for r in runs if "stage" in r.data.tags}
    parent = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
    assert len(parent) == 1 and set(by_stage) == {"train_classifier", "register"}
    assert {r.data.tags["mlflow.parentRunId"] for r in by_stage.values()} == {parent[0].info.run_id}
    assert parent[0].data.params["classifier.hidden"] == str(config.classifier.hidden)
    data_tags = {k: v for k, v in parent[0].data.tags.items() if k.startswith("data.")}
    assert data_tags["data.data.path"] == str(config.data.root)  # the data version of each role it trained on
    for run in by_stage.values():
        assert {k: run.data.tags.get(k) for k in data_tags} == data_tags
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == by_stage["train_classifier"].info.run_id]
    lambdas = {r.info.run_name for r in nested if r.info.run_name.startswith("lambda=")}
    assert lambdas == {f"lambda={lam}" for lam in config.classifier.lambdas}
    assert all(r.info.status == "FINISHED" for r in runs)
    best = next(r for r in nested if r.info.run_name == f"lambda={sweep['best_lambda']}")
    assert best.data.metrics["val_accuracy"] == pytest.approx(sweep["val_accuracy"])

    # the model's files went through the server into the bucket (read with boto3, not through MLflow)
    keys = _bucket_keys(stack)
    assert any(k.endswith("/MLmodel") for k in keys), keys[:10]
    assert any(k.endswith("head.pt") for k in keys)

    # registry: version, aliases, tags; the champion loads and answers from the server
    assert client.get_model_version_by_alias("http-emotion", "champion").version == "1"
    assert client.get_model_version_by_alias("http-emotion", "challenger").version == "1"
    model = mlflow.pyfunc.load_model("models:/http-emotion@champion")
    image = next((work / "synthetic/main/images").iterdir())
    out = model.predict(pd.DataFrame({"image": [encode_image_file(image)] * 2}))
    assert len(out) == 2 and out["label"][0] == out["label"][1]

    # the same register retried (same run, files, evaluation): the same version, no second one
    again = register.run(config, registering)
    assert again["version"] == 1 and again["promoted"]
    assert len(client.search_model_versions("name = 'http-emotion'")) == 1

    # lineage from the CLI: the pipeline run's git revision and the data versions of its roles
    shown = subprocess.run(
        [*CLI, "lineage", "models:/http-emotion@champion", "--json"], capture_output=True, text=True, cwd=work
    )
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["pipeline"]["run_id"] == parent[0].info.run_id
    assert record["params"]["register.model_name"] == "http-emotion"


def _tiny_model(tmp_path) -> tuple[str, Path]:
    """A logged pyfunc (URI) and a file standing for its weights."""

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"w")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="m", python_model=Constant(), pip_requirements=[])
    return info.model_uri, weights


def test_racing_promotions_leave_the_better_champion_every_time(stack, http_uri, tmp_path, monkeypatch):
    model_uri, weights = _tiny_model(tmp_path)
    read_champion = registry.current_champion

    def slow_read(*args, **kwargs):  # widen the window between reading the champion and setting the alias
        champion = read_champion(*args, **kwargs)
        time.sleep(random.uniform(0.0, 0.05))
        return champion

    monkeypatch.setattr(registry, "current_champion", slow_read)
    random.seed(0)
    for trial in range(20):
        name = f"race-{trial}"
        scores = [0.6, 0.9] if trial % 2 else [0.9, 0.6]
        results: dict[float, dict] = {}
        barrier = threading.Barrier(2)

        def promote(score: float, name: str = name, barrier=barrier, results=results) -> None:
            try:
                with mlflow.start_run(run_name=f"{name}-{score}"):
                    barrier.wait()
                    time.sleep(random.uniform(0.0, 0.03))
                    results[score] = registry.register_and_promote(
                        mlflow,
                        lambda: model_uri,
                        [weights],
                        name,
                        {"accuracy": score, "dataset": "synthetic", "label_set": "mikels8"},
                        0.0,
                    )
            except Exception as e:  # reported by the main thread
                results[score] = {"error": repr(e)}

        threads = [threading.Thread(target=promote, args=(s,)) for s in scores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not [r for r in results.values() if "error" in r], f"trial {trial}: {results}"
        client = mlflow.MlflowClient(http_uri)
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.tags["val_accuracy"] == "0.9", f"trial {trial}: the worse model became champion"
        assert results[0.9]["promoted"] and str(results[0.9]["version"]) == champion.version
        assert len(client.search_model_versions(f"name = '{name}'")) == 2
        assert not client.search_registered_models(f"name = '{name}{registry.LOCK_SUFFIX}'")  # lock released


def test_eight_racing_promoters_leave_the_best_champion_in_every_round(stack, http_uri):
    """8 promoters at once x 20 rounds against the PostgreSQL-backed server, scores drawn with ties, a dead holder's
    lock in every other round: the champion is always the best version (ties: the earliest), by hand."""
    client = mlflow.MlflowClient(http_uri)
    rng = random.Random(7)
    tags = {"dataset": "synthetic", "label_set": "mikels8"}
    for round_ in range(20):
        name = f"crowd-{round_}"
        client.create_registered_model(name)
        if round_ % 2:
            client.create_registered_model(name + registry.LOCK_SUFFIX, tags={"owner": "dead", "acquired_at": "0"})
        scores = [rng.choice([0.5, 0.6, 0.7, 0.8]) for _ in range(8)]
        versions = [
            str(
                client.create_model_version(
                    name, "s3://mlflow-artifacts/nowhere", tags={"test_accuracy": str(s), **tags}
                ).version
            )
            for s in scores
        ]
        barrier, results = threading.Barrier(8), {}

        def promote(version: str, score: float, barrier=barrier, results=results, name=name) -> None:
            barrier.wait()
            try:
                candidate = {"accuracy": score, **tags}
                results[version] = registry.promote(
                    mlflow.MlflowClient(http_uri), name, version, candidate, 0.0, "accuracy", "test_accuracy", "a", "m"
                )
            except Exception as e:  # reported by the main thread
                results[version] = e

        threads = [threading.Thread(target=promote, args=vs) for vs in zip(versions, scores, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not [r for r in results.values() if isinstance(r, Exception)], results
        best = versions[scores.index(max(scores))]  # the first drawn of the highest score: the earliest version
        assert str(client.get_model_version_by_alias(name, "champion").version) == best, (round_, scores)
        assert results[best][1], "the best version's promoter reports it promoted"
        assert not client.search_registered_models(f"name = '{name}{registry.LOCK_SUFFIX}'")  # lock released


def test_a_stale_lock_is_broken_and_a_held_one_times_out_with_its_name(mlflow_uri):
    client = mlflow.MlflowClient(mlflow_uri)
    lock = "locked" + registry.LOCK_SUFFIX
    client.create_registered_model(lock, tags={"owner": "gone", "acquired_at": str(time.time() - 3600)})
    with registry.promotion_lock(client, "locked", wait_s=5) as owner:
        assert client.get_registered_model(lock).tags["owner"] == owner
    assert not client.search_registered_models(f"name = '{lock}'")

    client.create_registered_model(lock, tags={"owner": "busy", "acquired_at": str(time.time())})
    with (
        pytest.raises(registry.RegistryLockTimeout, match=f"{lock}.*held by busy"),
        registry.promotion_lock(client, "locked", wait_s=0.5),
    ):
        pass
    assert client.get_registered_model(lock).tags["owner"] == "busy"  # someone else's lock is left alone


def test_an_unreachable_server_is_one_line_naming_it(tmp_path, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(TrackingUnavailable) as caught, stage_run(tiny_config(), "evaluate"):
        pass
    message = str(caught.value)
    assert uri in message and "re-run the stage to resume" in message and "\n" not in message


def _finetune(project: Path, work: Path) -> list[str]:
    return [
        *CLI, "finetune-detector", "--params", str(project / "params.yaml"),
        "--prepared", str(work / "prepared/detector"), "--objects", str(work / "models/objects.pt"),
        "--checkpoint", str(project / "ckpt/last.pt"), "--model", str(project / "model/detector.pt"),
        "--metrics", str(project / "detector.json"), "--set", "finetune.epochs=6",
        "--set", "mlflow.experiment=outage",
    ]  # fmt: skip


def test_a_server_outage_mid_training_loses_nothing_and_the_rerun_completes_the_run(tiny_run, stack, http_uri,
                                                                                    tmp_path):  # fmt: skip
    work, _ = tiny_run
    project = tmp_path
    write_tiny_params(project / "params.yaml")
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    proc = subprocess.Popen(_finetune(project, work), stderr=subprocess.PIPE, text=True, env=env, cwd=project)
    wait_for_checkpoint(project / "ckpt/last.pt", proc)
    stack.stop_server()
    try:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: MLflow tracking server http://127.0.0.1:") and http_uri in last, last
        stopped_at = load_checkpoint(project / "ckpt/last.pt")["epoch"]  # the checkpoint is intact
        assert 1 <= stopped_at < 6
        assert not (project / "model/detector.pt").exists()
    finally:
        stack.start_server()

    done = subprocess.run(_finetune(project, work), capture_output=True, text=True, env=env, cwd=project)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"after epoch {stopped_at}" in done.stderr
    client = mlflow.MlflowClient(http_uri)
    experiment = client.get_experiment_by_name("outage")
    runs = client.search_runs([experiment.experiment_id])
    stage = [r for r in runs if r.data.tags.get("stage") == "finetune_detector"]
    assert len(stage) == 1 and stage[0].info.status == "FINISHED"
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    steps = sorted(m.step for m in client.get_metric_history(stage[0].info.run_id, "loss"))
    assert steps == [1, 2, 3, 4, 5, 6]  # the epoch whose logging failed is logged after the resume, none twice
