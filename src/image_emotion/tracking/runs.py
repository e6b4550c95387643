"""MLflow runs: one parent run per pipeline run, one nested run per stage, and runs per λ / per fold below it.

The tree is the same however the stages run (``dvc repro``, the CLI, kfp components)::

    pipeline-<key>                      tags kind=pipeline, pipeline_key, git_revision; every param
    ├── finetune_detector, extract_regions, evaluate, register
    ├── train_classifier                ├── lambda=0.0 ... lambda=1.0, loss=cls, loss=p, mode=..., binary
    └── transfer_cv                     └── fold=0 ... fold=4

A stage run is found by its tags (``pipeline_key``, ``stage``) and re-opened when it exists, so the kfp
components that split a stage (one per λ, one per fold) nest their runs under the same stage run.
Concurrent creators settle on the oldest run (the others delete theirs), so parallel pods agree.

- Tracking URI: ``$MLFLOW_TRACKING_URI``, else params ``mlflow.tracking_uri``, else ``sqlite:///mlflow.db``.
- The parent run of a pipeline run is found by its tag ``pipeline_key``: ``$IMAGE_EMOTION_PIPELINE_RUN``
  when set (the kfp pipeline sets it to its run id), else a hash of the resolved params and the git revision,
  so every stage of one ``dvc repro`` (separate processes) lands under the same parent.
- Artifacts go where the experiment says: params ``mlflow.artifact_location`` (e.g. ``s3://bucket/mlflow``
  with ``$MLFLOW_S3_ENDPOINT_URL`` for a MinIO/S3 endpoint) when the experiment is created.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from image_emotion.config import Config
from image_emotion.files import fingerprint

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def _mlflow():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    return mlflow


def tracking_uri(config: Config) -> str:
    """Where runs go: env, then params, then a local sqlite file."""
    return os.environ.get("MLFLOW_TRACKING_URI") or config.mlflow.tracking_uri or DEFAULT_TRACKING_URI


def git_revision() -> str:
    """The git commit of the working tree (``+dirty`` when it has changes), or ``unknown`` outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def pipeline_key(config: Config) -> str:
    """Identity of one pipeline run (see module docstring)."""
    return os.environ.get("IMAGE_EMOTION_PIPELINE_RUN") or fingerprint(config.to_dict(), git_revision())


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
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri(config))
    experiment = mlflow.get_experiment_by_name(config.mlflow.experiment)
    if experiment is None:
        return mlflow.create_experiment(config.mlflow.experiment, artifact_location=config.mlflow.artifact_location)
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


def parent_run(config: Config) -> tuple[str, str, str]:
    """(experiment id, parent run id, pipeline key) of this pipeline run; the parent run is created (with the
    params and the revision) on first use."""
    mlflow = _mlflow()
    experiment_id = setup(config)
    key = pipeline_key(config)
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
        client.set_terminated(run_id)
    return experiment_id, run_id, key


@contextmanager
def stage_run(config: Config, stage: str, sections: tuple[str, ...] = ()) -> Iterator[Any]:
    """The MLflow run of ``stage`` under the pipeline's parent run (re-opened when it exists), active while the
    block runs, with the config ``sections`` as its params; yields the ``mlflow`` module."""
    mlflow = _mlflow()
    experiment_id, parent, key = parent_run(config)
    tags = {"mlflow.parentRunId": parent, "stage": stage, "pipeline_key": key}

    def create() -> str:
        client = mlflow.MlflowClient()
        return client.create_run(experiment_id, run_name=stage, tags=tags).info.run_id

    run_id, _ = _find_or_create(experiment_id, {"stage": stage, "pipeline_key": key}, create)
    with mlflow.start_run(run_id=run_id):
        params = {name: getattr(config, name).to_dict() for name in sections}
        if params:
            mlflow.log_params({k: str(v)[:6000] for k, v in flatten(params).items()})
        yield mlflow


@contextmanager
def child_run(name: str, log_params: dict[str, Any] | None = None) -> Iterator[Any]:
    """A run nested under the active stage run (one per λ, per fold...)."""
    mlflow = _mlflow()
    active = mlflow.active_run()
    experiment_id = active.info.experiment_id if active else None
    with mlflow.start_run(run_name=name, nested=True, experiment_id=experiment_id):
        if log_params:
            mlflow.log_params({k: str(v) for k, v in flatten(log_params).items()})
        yield mlflow


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log to the active run (finite numbers only)."""
    mlflow = _mlflow()
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}, step=step)
