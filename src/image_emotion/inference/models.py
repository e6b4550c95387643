"""Which model answers, by one rule for ``predict``, ``retrieve`` and ``describe``:

1. ``--model-uri`` (an MLflow model: ``models:/NAME@ALIAS``, ``runs:/...``);
2. else the local files when the user named them (``--detector``/``--head``, ``--model``/``--index``);
3. else the registry's champion (``models:/<register.*model_name>@champion``) when the configured tracking store
   exists and has one (a store is never created here);
4. else the local files at their default paths (what ``dvc repro`` writes);
5. else a one-line error saying how to get a model.

Either way the answer comes from the same predictor class the served model wraps (``tracking/*pyfunc.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image_emotion.config import DEFAULT_PARAMS
from image_emotion.errors import ConfigError
from image_emotion.stages.paths import (
    ClassifierPaths,
    EvaluatePaths,
    FinetunePaths,
    RetrievePaths,
    TrainGenerativePaths,
)


@dataclass(frozen=True)
class Kind:
    """A kind of model: its local files (name -> default path), its registered name's setting, how to load it."""

    files: Mapping[str, Path]
    registered: str  # the RegisterConfig field that names it in the registry
    stage: str  # what writes the local files
    load: Callable[..., Any]  # (**local files, batch_size=) -> predictor


def _emotion(detector: Path, head: Path, batch_size: int) -> Any:
    from image_emotion.tracking.pyfunc import EmotionPredictor

    return EmotionPredictor(detector, head, batch_size=batch_size)


def _retrieval(model: Path, index: Path | None, batch_size: int) -> Any:
    from image_emotion.tracking.retrieval_pyfunc import RetrievalPredictor

    return RetrievalPredictor(model, index)


def _generative(model: Path, batch_size: int) -> Any:
    from image_emotion.tracking.generative_pyfunc import GenerativePredictor

    return GenerativePredictor(model)


_EVALUATED, _RETRIEVAL, _GENERATIVE = EvaluatePaths(), RetrievePaths(), TrainGenerativePaths()
KINDS = {  # the local files are where the stage declarations put them
    "emotion": Kind(
        {"detector": FinetunePaths().model, "head": _EVALUATED.head},
        "model_name",
        ClassifierPaths.command,
        _emotion,
    ),
    "retrieval": Kind(
        {"model": _RETRIEVAL.model, "index": _RETRIEVAL.index},
        "retrieval_model_name",
        RetrievePaths.command,
        _retrieval,
    ),
    "generative": Kind(
        {"model": _GENERATIVE.out_dir}, "generative_model_name", TrainGenerativePaths.command, _generative
    ),
}


SYNTHETIC = "synthetic"  # the embedded dataset's name (data/datasets): its models warn


@dataclass(frozen=True)
class Resolved:
    """The predictor that answers and what it was loaded from (shown to the user)."""

    predictor: Any
    source: str

    @property
    def warning(self) -> str | None:
        """The one warning its answers need: a model that learned from the embedded synthetic set (the default
        run's) knows coloured shapes, not photographs."""
        if getattr(self.predictor, "trained_on", None) != SYNTHETIC:
            return None
        return (
            "this model was trained on the embedded synthetic images, not real photos: its answers show the "
            "mechanics, not what a photo evokes; train on a real dataset for that (docs/pipeline.md: running on "
            "the real datasets)"
        )


def _store(params: Path) -> tuple[Any, str]:
    """(the config of ``params``, or the defaults where there is no such file; its tracking URI)."""
    from image_emotion.config import Config, load_config
    from image_emotion.tracking.relocate import relocate_project_store
    from image_emotion.tracking.runs import tracking_uri

    config = load_config(params) if params.is_file() else Config()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri(config)
    relocate_project_store(uri)  # a copied project's models load from its own mlruns/
    return config, uri


def champion_uri(registered: str, params: Path) -> str | None:
    """``models:/<name>@champion`` when the tracking store ``params`` configures exists and has one."""
    config, uri = _store(params)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    name = getattr(config.register, registered)
    try:
        mlflow.MlflowClient(uri).get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    mlflow.set_tracking_uri(uri)
    return f"models:/{name}@champion"


def load_uri(uri: str) -> Any:
    """The predictor inside an MLflow pyfunc model (loaded in this process)."""
    import mlflow

    try:
        return mlflow.pyfunc.load_model(uri).unwrap_python_model().predictor
    except Exception as exc:  # MLflow raises many kinds for a bad URI; one line names it and the way out
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--model-uri {uri}: cannot load it ({first}); check the name, version or alias") from None


def resolve(
    kind: str,
    model_uri: str | None = None,
    files: Mapping[str, Path | None] | None = None,
    params: Path = DEFAULT_PARAMS,
    batch_size: int = 8,
    unused: tuple[str, ...] = (),
) -> Resolved:
    """The model of ``kind`` (``KINDS``) that answers, by the module's rule. ``files``: the local files the user
    named (``None``: not named); ``unused``: local files not loaded (the retrieval index when a folder is
    searched instead)."""
    spec = KINDS[kind]
    if model_uri:
        import mlflow

        mlflow.set_tracking_uri(_store(params)[1])  # where a models:/ URI is looked up
        return Resolved(load_uri(model_uri), model_uri)
    named = {k: v for k, v in (files or {}).items() if v is not None}
    if not named:
        uri = champion_uri(spec.registered, params)
        if uri:
            return Resolved(load_uri(uri), uri)
    chosen = {**spec.files, **named}
    missing = [str(p) for name, p in chosen.items() if name not in unused and not p.exists()]
    if missing:
        raise ConfigError(
            f"no model: {', '.join(missing)} not found and no champion in the registry; run `dvc repro` "
            f"(or `image-emotion {spec.stage}`), or give --model-uri"
        )
    loaded = {k: (None if k in unused else v) for k, v in chosen.items()}
    return Resolved(spec.load(**loaded, batch_size=batch_size), " + ".join(str(p) for p in loaded.values() if p))
