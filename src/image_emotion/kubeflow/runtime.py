"""What a kfp component does before and around calling a stage: the config, MLflow identity, artifact files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from image_emotion.config import Config, validate


def setup(params_yaml: str, mlflow_tracking_uri: str, mlflow_experiment: str, pipeline_run_id: str) -> Config:
    """The validated config of the pipeline run; MLflow pointed at the pipeline's tracking server and run."""
    config = validate(yaml.safe_load(params_yaml) or {}, "params_yaml")
    if mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    if pipeline_run_id:
        os.environ["IMAGE_EMOTION_PIPELINE_RUN"] = pipeline_run_id
    return config.with_overrides([f"mlflow.experiment={mlflow_experiment}"] if mlflow_experiment else [])


def transfer_config(config: Config) -> Config:
    """The config the transfer target's make_synthetic/prepare see (as dvc.yaml's prepare_transfer sets it)."""
    t = config.transfer
    return config.with_overrides(
        [
            f"data.dataset={t.dataset}",
            f"data.root={t.root}",
            f"synthetic.num_images={t.synthetic.num_images}",
            f"synthetic.seed={t.synthetic.seed}",
        ]
    )


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def log_to_kfp(metrics_artifact: Any, values: dict[str, Any]) -> None:
    """Every finite number of ``values`` (flattened) as a kfp Metrics entry."""
    from image_emotion.tracking.runs import flatten

    for key, value in flatten(values).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value == value and abs(value) != float("inf"):
            metrics_artifact.log_metric(key, float(value))
