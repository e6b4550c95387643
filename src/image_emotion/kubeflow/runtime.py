"""What a kfp component does before and around calling a stage: the config, MLflow identity, artifact files."""

from __future__ import annotations

import json
import os
from collections import namedtuple
from pathlib import Path
from typing import Any

import yaml

from image_emotion.config import Config, validate
from image_emotion.data.synthetic import generate
from image_emotion.errors import ConfigError


def setup(params_yaml: str, mlflow_tracking_uri: str, mlflow_experiment: str, pipeline_run_id: str) -> Config:
    """The validated config of the pipeline run; MLflow pointed at the pipeline's tracking server and run."""
    config = validate(yaml.safe_load(params_yaml) or {}, "params_yaml")
    if mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    if pipeline_run_id:
        os.environ["IMAGE_EMOTION_PIPELINE_RUN"] = pipeline_run_id
    return config.with_overrides([f"mlflow.experiment={mlflow_experiment}"] if mlflow_experiment else [])


GENERATIVE_ROLE = "generative:"  # prepare_op's role of a set of generative.sets: "generative:<name>"


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
    return config.with_overrides([f"data.dataset={ref.dataset}", f"data.root={ref.root}"])


def draw_if_synthetic(config: Config, out: Path) -> Config:
    """For a synthetic ``data`` role: draw its set (the last part of ``data.root`` names it in
    ``synthetic.sets``) into ``out`` and point ``data.root`` there; other datasets are left as they are."""
    if config.data.dataset != "synthetic":
        return config
    generate(out, config.synthetic, Path(config.data.root).name)
    return config.with_overrides([f"data.root={out}"])


def draw_objects(config: Config, out: Path) -> Config:
    """Draw the synthetic objects set of ``pretrain.root`` into ``out`` and point ``pretrain.root`` there."""
    generate(out, config.synthetic, Path(config.pretrain.root).name)
    return config.with_overrides([f"pretrain.root={out}"])


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
