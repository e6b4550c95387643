"""Submitting the compiled pipeline to a Kubeflow Pipelines backend, after checking the backend's version.

The minimum backend is ``MIN_KFP_BACKEND``: the detector's ``dsl.OneOf`` over the If/Else branches' artifacts
(one GPU pod, or a TrainJob of ``workers`` pods) resolves correctly only from KFP 2.17.0 on; older backends take
the last branch's selector whichever branch ran (kubeflow/pipelines#13436, fixed by #13437), so ``workers`` > 1
hands the next step a detector that does not exist. The backend's version is the ``tag_name`` its API server
reports at ``/apis/v2beta1/healthz`` (the server's ``TAG_NAME``; the SDK's generated model drops that field, so
the answer is read raw).
"""

import contextlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from packaging.version import InvalidVersion, Version

from image_emotion.config import Config
from image_emotion.errors import ConfigError
from image_emotion.kubeflow.pipeline import pipeline_arguments

MIN_KFP_BACKEND = "2.17.0"  # README and docs/kubeflow.md say so; a test keeps them in step
FROM_CONFIG = ("params_yaml", "data_versions")  # filled from --params/--set and this checkout's DVC files
REMOTE_SCHEMES = ("http://", "https://")


def check_backend(tag: str, host: str, minimum: str = MIN_KFP_BACKEND) -> Version:
    """The backend's release from the ``tag_name`` it reports; a ``ConfigError`` when it is older than ``minimum``
    (pre-releases of ``minimum`` included) or not a release number (``unknown``, a branch name)."""
    try:
        version = Version(tag.strip().removeprefix("v"))
    except InvalidVersion:
        raise ConfigError(
            f"the KFP backend at {host} reports version {tag or '(none)'!r}, not a release: this pipeline needs "
            f"{minimum} or later (kubeflow/pipelines#13437); pass --skip-version-check if you know it has that fix"
        ) from None
    if version < Version(minimum):
        raise ConfigError(
            f"the KFP backend at {host} is {tag}; this pipeline needs {minimum} or later (before it, the detector's "
            "dsl.OneOf takes the wrong branch's model: kubeflow/pipelines#13436): upgrade Kubeflow Pipelines"
        )
    return version


def backend_tag(client: Any) -> str:
    """The ``tag_name`` the KFP API server of ``client`` (a ``kfp.Client``) reports, '' when it reports none."""
    response = client._healthz_api.healthz_service_get_healthz(_preload_content=False)  # raw: keeps tag_name
    return str(json.loads(response.data or b"{}").get("tag_name", ""))


def package_parameters(package: Path) -> dict[str, str]:
    """The root parameters of a compiled pipeline package and their kfp types (``STRING``, ``NUMBER_INTEGER``, …)."""
    try:
        spec = next(yaml.safe_load_all(package.read_text()))
        parameters = spec["root"]["inputDefinitions"]["parameters"]
    except (yaml.YAMLError, KeyError, TypeError, StopIteration) as exc:
        what = f"{package}: not a compiled kfp pipeline ({exc})"
        raise ConfigError(f"{what}; compile it with `image-emotion compile-pipeline`") from None
    return {name: p["parameterType"] for name, p in parameters.items()}


def parse_arguments(items: Sequence[str], parameters: Mapping[str, str]) -> dict[str, Any]:
    """``NAME=VALUE`` pipeline arguments typed by the package's parameter types (integers, numbers, booleans; JSON
    for structs and lists). Unknown names and the ones the config fills are errors."""
    parsed: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--arg {item!r}: expected NAME=VALUE")
        if name in FROM_CONFIG:
            raise ConfigError(f"--arg {name}: filled from --params/--set and this checkout's data; set those instead")
        if name not in parameters:
            known = ", ".join(sorted(set(parameters) - set(FROM_CONFIG)))
            raise ConfigError(f"--arg {name}: the pipeline has no such parameter; it takes {known}")
        parsed[name] = _typed(name, text, parameters[name])
    return parsed


def _typed(name: str, text: str, kind: str) -> Any:
    try:
        if kind == "NUMBER_INTEGER":
            return int(text)
        if kind == "NUMBER_DOUBLE":
            return float(text)
        if kind == "BOOLEAN":
            if text.lower() not in ("true", "false"):
                raise ValueError("expected true or false")
            return text.lower() == "true"
        if kind in ("STRUCT", "LIST"):
            value = json.loads(text)
            if not isinstance(value, dict if kind == "STRUCT" else list):
                raise ValueError(f"expected a JSON {'object' if kind == 'STRUCT' else 'list'}")
            return value
    except ValueError as exc:
        raise ConfigError(f"--arg {name}={text}: {exc} ({kind})") from None
    return text


def submit(
    config: Config,
    package: Path,
    host: str,
    mlflow_tracking_uri: str,
    arguments: Sequence[str] = (),
    experiment: str = "image-emotion",
    run_name: str | None = None,
    namespace: str | None = None,
    check_version: bool = True,
) -> dict[str, Any]:
    """Submit ``package`` to the KFP backend at ``host`` with the config's params, this checkout's data versions and
    the ``NAME=VALUE`` ``arguments``, once the backend's version is checked. Returns the run's id, link and the
    backend's version. kfp's own "details" lines go to stderr (stdout carries the result)."""
    if not mlflow_tracking_uri.startswith(REMOTE_SCHEMES):
        raise ConfigError(
            f"--mlflow-tracking-uri {mlflow_tracking_uri or '(none)'!r}: a cluster run needs an MLflow server the "
            "pods reach, e.g. http://mlflow.mlflow.svc:5000 (deploy/kubernetes/mlflow.yaml)"
        )
    typed = parse_arguments(arguments, package_parameters(package))  # before any request: bad input costs nothing
    import kfp

    with contextlib.redirect_stdout(sys.stderr):
        client = kfp.Client(host=host, namespace=namespace or "kubeflow")
        tag = backend_tag(client)
        if check_version:
            check_backend(tag, host)
        run = client.create_run_from_pipeline_package(
            str(package),
            arguments={**pipeline_arguments(config), "mlflow_tracking_uri": mlflow_tracking_uri, **typed},
            run_name=run_name,
            experiment_name=experiment,
            namespace=namespace,
        )
    return {
        "run_id": run.run_id,
        "run_url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}",
        "backend_version": tag or "unknown",
        "version_checked": check_version,
    }
