"""MLflow: one parent run per pipeline run, a nested run per stage (and per λ, per fold), the registry.

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

from image_emotion.checkpoint import fingerprint
from image_emotion.config import get

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def _mlflow():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    return mlflow


def tracking_uri(params: dict[str, Any]) -> str:
    """Where runs go: env, then params, then a local sqlite file."""
    return os.environ.get("MLFLOW_TRACKING_URI") or get(params, "mlflow.tracking_uri", None) or DEFAULT_TRACKING_URI


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


def pipeline_key(params: dict[str, Any]) -> str:
    """Identity of one pipeline run (see module docstring)."""
    return os.environ.get("IMAGE_EMOTION_PIPELINE_RUN") or fingerprint(params, git_revision())


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


def setup(params: dict[str, Any]) -> str:
    """Point MLflow at the tracking URI and experiment (created with the artifact location); its id."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri(params))
    name = get(params, "mlflow.experiment", "image-emotion")
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        return mlflow.create_experiment(name, artifact_location=get(params, "mlflow.artifact_location", None))
    return experiment.experiment_id


def parent_run(params: dict[str, Any]) -> tuple[str, str, str]:
    """(experiment id, parent run id, pipeline key) of this pipeline run; the parent run is created (with the
    params and the revision) on first use."""
    mlflow = _mlflow()
    experiment_id = setup(params)
    key = pipeline_key(params)
    found = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.pipeline_key = '{key}' and tags.kind = 'pipeline'",
        output_format="list",
        max_results=1,
    )
    if found:
        return experiment_id, found[0].info.run_id, key
    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id,
        run_name=f"pipeline-{key[:8]}",
        tags={
            "pipeline_key": key,
            "kind": "pipeline",
            "git_revision": git_revision(),
            "dvc_lock": fingerprint(Path("dvc.lock").read_text()) if Path("dvc.lock").is_file() else "none",
        },
    )
    from mlflow.entities import Param

    entries = [Param(k[:250], str(v)[:6000]) for k, v in flatten(params).items()]
    for start in range(0, len(entries), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=entries[start : start + 100])
    client.log_text(run.info.run_id, json.dumps(params, indent=2, sort_keys=True), "params.resolved.json")
    client.set_terminated(run.info.run_id)
    return experiment_id, run.info.run_id, key


@contextmanager
def stage_run(params: dict[str, Any], stage: str, log_params: dict[str, Any] | None = None) -> Iterator[Any]:
    """An MLflow run for ``stage`` nested under the pipeline's parent run; yields the ``mlflow`` module."""
    mlflow = _mlflow()
    experiment_id, parent, key = parent_run(params)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=stage,
        tags={"mlflow.parentRunId": parent, "stage": stage, "pipeline_key": key},
    ):
        if log_params:
            mlflow.log_params({k: str(v)[:6000] for k, v in flatten(log_params).items()})
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
