"""MLflow runs: one parent run per pipeline run, one nested run per stage, and runs per λ / per fold below it.

The tree is the same however the stages run (``dvc repro``, the CLI, kfp components)::

    pipeline-<key>                      tags kind=pipeline, pipeline_key, git_revision; every param
    ├── finetune_detector, extract_regions, evaluate, register
    ├── train_classifier                ├── lambda=0.0 ... lambda=1.0, loss=cls, loss=p, mode=..., binary
    └── transfer_cv                     └── fold=0 ... fold=4

A stage run is found by its tags (``pipeline_key``, ``stage``) and re-opened when it exists, so the kfp
components that split a stage (one per λ, one per fold) nest their runs under the same stage run.
Concurrent creators settle on the oldest run (the others delete theirs), so parallel pods agree.

- Tracking URI: ``$MLFLOW_TRACKING_URI``, else params ``mlflow.tracking_uri``, else ``mlflow.db`` at the root of
  the DVC project (``$DVC_ROOT``: a queued ``dvc exp run`` runs in a temporary copy of the workspace, and its runs
  belong in the project's store, not in a file deleted with the copy), else in the working directory.
- The parent run of a pipeline run is found by its tag ``pipeline_key``: ``$IMAGE_EMOTION_PIPELINE_RUN``
  when set (the kfp pipeline sets it to its run id), else a hash of the resolved params, the git revision and the
  DVC hash of every dataset that enters from outside (``tracking/lineage.py``), so every stage of one ``dvc repro``
  (separate processes) lands under the same parent, and new data makes a new one. The parent run records the
  version of every dataset role (``data.<role>.*`` tags and MLflow dataset inputs): ``image-emotion lineage``
  follows a registered model back to them.
- Artifacts go where the experiment says: params ``mlflow.artifact_location`` (e.g. ``s3://bucket/mlflow``
  with ``$MLFLOW_S3_ENDPOINT_URL`` for a MinIO/S3 endpoint) when the experiment is created.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from image_emotion.config import Config, set_values
from image_emotion.errors import ImageEmotionError
from image_emotion.files import fingerprint
from image_emotion.revision import git_revision
from image_emotion.tracking import lineage

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def _mlflow():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    return mlflow


def default_tracking_uri() -> str:
    """The project's own sqlite store: ``mlflow.db`` in the DVC project's root (``$DVC_ROOT``, which dvc sets for
    every stage and points at the main workspace for queued experiments), else in the working directory."""
    root = os.environ.get("DVC_ROOT")
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}" if root else DEFAULT_TRACKING_URI


def tracking_uri(config: Config) -> str:
    """Where runs go: env, then params, then the project's sqlite file."""
    return os.environ.get("MLFLOW_TRACKING_URI") or config.mlflow.tracking_uri or default_tracking_uri()


def external_data(versions: dict[str, lineage.DataVersion]) -> dict[str, str]:
    """The versions of the datasets that enter the graph from outside (``dvc add``, ``import-url``, unversioned),
    by role; a dataset a stage makes (the synthetic sets) is already fixed by the params and the code."""
    return {role: v.digest for role, v in versions.items() if not v.source.startswith("dvc stage") and not v.within}


def pipeline_key(config: Config, versions: dict[str, lineage.DataVersion] | None = None) -> str:
    """Identity of one pipeline run (see module docstring): params, code and the external data versions (found
    here unless given)."""
    if os.environ.get("IMAGE_EMOTION_PIPELINE_RUN"):
        return os.environ["IMAGE_EMOTION_PIPELINE_RUN"]
    if versions is None:
        versions = lineage.data_versions(config, Path.cwd(), skip_missing=True)
    return fingerprint(config.to_dict(), git_revision(), external_data(versions))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists as JSON) for ``mlflow.log_params``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out


def setup(config: Config) -> str:
    """Point MLflow at the tracking URI and experiment (created with the artifact location); its id."""
    from image_emotion.tracking.relocate import relocate_project_store

    mlflow = _mlflow()
    uri = tracking_uri(config)
    relocate_project_store(uri)  # a copied project's store points at its own mlruns/
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(config.mlflow.experiment)
    if experiment is None:
        location = config.mlflow.artifact_location
        if location is None and uri == default_tracking_uri() and os.environ.get("DVC_ROOT"):
            location = (Path(os.environ["DVC_ROOT"]).resolve() / "mlruns").as_uri()  # beside the project's store
        return mlflow.create_experiment(config.mlflow.experiment, artifact_location=location)
    return experiment.experiment_id


def _find_or_create(experiment_id: str, tags: dict[str, str], create) -> tuple[str, bool]:
    """(run id, created) of the oldest run with ``tags``; ``create()`` makes one when none exists. Two processes
    that both create settle on the oldest and the other one's run is deleted."""
    mlflow = _mlflow()
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())

    def oldest():
        found = mlflow.search_runs(
            [experiment_id], filter_string=query, output_format="list", order_by=["attributes.start_time ASC"]
        )
        return min(found, key=lambda r: (r.info.start_time, r.info.run_id)) if found else None

    found = oldest()
    if found is not None:
        return found.info.run_id, False
    mine = create()
    winner = oldest().info.run_id
    if winner != mine:
        mlflow.MlflowClient().delete_run(mine)
    return winner, winner == mine


def parent_run(config: Config) -> tuple[str, str, str, dict[str, lineage.DataVersion]]:
    """(experiment id, parent run id, pipeline key, data versions) of this pipeline run; the parent run is created
    (with the params, the revision and the data versions) on first use."""
    mlflow = _mlflow()
    experiment_id = setup(config)
    versions = lineage.data_versions(config, Path.cwd(), skip_missing=True)  # a stage that needs one checks it
    key = pipeline_key(config, versions)
    client = mlflow.MlflowClient()

    def create() -> str:
        tags = {
            "pipeline_key": key,
            "kind": "pipeline",
            "git_revision": git_revision(),
            "dvc_lock": fingerprint(Path("dvc.lock").read_text()) if Path("dvc.lock").is_file() else "none",
        }
        return client.create_run(experiment_id, run_name=f"pipeline-{key[:8]}", tags=tags).info.run_id

    run_id, created = _find_or_create(experiment_id, {"pipeline_key": key, "kind": "pipeline"}, create)
    if created:
        from mlflow.entities import Param

        entries = [Param(k[:250], str(v)[:6000]) for k, v in flatten(config.to_dict()).items()]
        for start in range(0, len(entries), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=entries[start : start + 100])
        client.log_text(run_id, json.dumps(config.to_dict(), indent=2, sort_keys=True), "params.resolved.json")
        lineage.log_data_versions(client, run_id, versions, Path.cwd())
        client.set_terminated(run_id)
    return experiment_id, run_id, key, versions


class TrackingUnavailable(ImageEmotionError):
    """The MLflow tracking server cannot be reached."""


def _unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) is a failed connection to the tracking server."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if any(s in text for s in ("Max retries exceeded", "Connection refused", "Failed to establish")):
            return True
        if type(error).__name__ in ("ConnectionError", "ConnectTimeout", "ReadTimeout", "NewConnectionError"):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextmanager
def reachable(config: Config) -> Iterator[None]:
    """Turn a failed connection to the tracking server into one line naming its URI and the way out."""
    try:
        yield
    except Exception as e:
        if isinstance(e, ImageEmotionError) or not _unreachable(e):
            raise
        raise TrackingUnavailable(
            f"MLflow tracking server {tracking_uri(config)} cannot be reached; outputs and checkpoints written so "
            "far are kept: bring the server back (image-emotion tracking-server start) or point "
            "MLFLOW_TRACKING_URI at a reachable one, then re-run the stage to resume"
        ) from e


NOT_LOGGED = ("*", "mlflow")  # the whole file (the report logs its hash); where to log (may hold credentials)


def logged_params(config: Config, sections: tuple[str, ...]) -> dict[str, Any]:
    """The config ``sections`` a stage reads (``paths.Stage.reads``: a section, a dotted part of one, or a single
    setting such as ``device``) as nested params, less ``NOT_LOGGED``."""
    pairs = []
    for name in sections:
        if name in NOT_LOGGED:
            continue
        value: Any = config
        for key in name.split("."):
            value = getattr(value, key)
        pairs.append((name, value.to_dict() if hasattr(value, "to_dict") else value))
    return set_values({}, pairs)


@contextmanager
def stage_run(config: Config, stage: str, sections: tuple[str, ...] = ()) -> Iterator[Any]:
    """The MLflow run of ``stage`` under the pipeline's parent run (re-opened when it exists: a re-run after a
    failure completes it), active while the block runs, with the config ``sections`` as its params
    (``logged_params``); yields the
    ``mlflow`` module. An unreachable tracking server is a ``TrackingUnavailable`` error."""
    mlflow = _mlflow()
    with reachable(config):
        experiment_id, parent, key, versions = parent_run(config)
        tags = {"mlflow.parentRunId": parent, "stage": stage, "pipeline_key": key}
        if os.environ.get("IMAGE_EMOTION_IMAGE"):  # set in the container images (docker/Dockerfile): which one ran
            tags["image"] = os.environ["IMAGE_EMOTION_IMAGE"]

        def create() -> str:
            client = mlflow.MlflowClient()
            run_id = client.create_run(experiment_id, run_name=stage, tags=tags).info.run_id
            lineage.log_data_versions(client, run_id, versions, Path.cwd())  # each stage run names its data too
            return run_id

        run_id, _ = _find_or_create(experiment_id, {"stage": stage, "pipeline_key": key}, create)
        with mlflow.start_run(run_id=run_id):
            params = logged_params(config, sections)
            if params:
                mlflow.log_params({k: str(v)[:6000] for k, v in flatten(params).items()})
            yield mlflow
        extend_parent(mlflow.MlflowClient(), parent)


def extend_parent(client: Any, parent: str) -> None:
    """Move the parent run's end to now, so its duration is the pipeline run's: from its first stage's start to its
    last stage's end (only ever later: a stage that ends first in a parallel kfp run does not pull it back)."""
    end = int(time.time() * 1000)
    if (client.get_run(parent).info.end_time or 0) < end:
        client.set_terminated(parent, end_time=end)


@contextmanager
def child_run(name: str, log_params: dict[str, Any] | None = None) -> Iterator[Any]:
    """A run nested under the active stage run (one per λ, per fold...). The child of that name is re-opened when
    it exists (a re-run of the same pipeline run completes it instead of leaving a second, unfinished one)."""
    mlflow = _mlflow()
    active = mlflow.active_run()
    kwargs: dict[str, Any] = {"run_name": name}
    if active is not None:
        experiment_id, parent = active.info.experiment_id, active.info.run_id
        found = mlflow.search_runs(
            [experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent}' and attributes.run_name = '{name}'",
            output_format="list",
        )
        oldest = min(found, key=lambda r: (r.info.start_time, r.info.run_id)) if found else None
        kwargs = {"run_id": oldest.info.run_id} if oldest else {**kwargs, "experiment_id": experiment_id}
    with mlflow.start_run(nested=True, **kwargs):
        if log_params:
            mlflow.log_params({k: str(v) for k, v in flatten(log_params).items()})
        yield mlflow


def log_missing_steps(history: list[dict[str, float]], first_step: int = 0, key: str = "loss") -> None:
    """Log the entries of a per-epoch ``history`` (``history[i]`` at step ``first_step + i``) that the active run
    lacks (judged by ``key``): the epoch whose logging failed before a resume is logged now, none twice."""
    mlflow = _mlflow()
    run_id = mlflow.active_run().info.run_id
    logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, key)}
    for i, metrics in enumerate(history):
        if first_step + i not in logged:
            log_metrics(metrics, step=first_step + i)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log to the active run (finite numbers only)."""
    mlflow = _mlflow()
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}, step=step)
