"""The served generative model of seed 001: an MLflow pyfunc that answers every emotion model from one set of
weights.

Input: a DataFrame with a column ``image`` (base64 image files, decoded safely one batch at a time, each reduced
while decoded to the encoder's input size, under the limits the model was logged with: ``tracking/served_input.py``);
optional param ``emotion_models`` (comma-separated, e.g. ``"mikels8,binary"``; empty: every emotion model the
model was trained on). Output: one row per image and emotion model: ``image`` (the input row), ``emotion_model``,
``label`` (the label whose filled template is most likely), ``confidence`` (its probability), ``polarity``
(empty for a label without one), ``distribution`` (JSON ``{label: probability}``: the softmax over the labels'
template log-likelihoods) and ``text`` (the filled template). Works on CPU, uses CUDA when there is one.

``GenerativePredictor`` is the plain-Python part (the CLI's ``describe`` uses it); ``GenerativeModel`` wraps it
for MLflow (artifact ``model``: the saved model directory).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image

from image_emotion.config import ServingConfig
from image_emotion.data.emotions import get_label_set
from image_emotion.data.images import Fit
from image_emotion.tracking.served_input import (
    BadServedParameter,
    limits_of,
    request_batches,
    unique_names,
)

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency; this keeps the predictor importable without it
    PythonModel = object

OUTPUT_COLUMNS = ["image", "emotion_model", "label", "confidence", "polarity", "distribution", "text"]


class GenerativePredictor:
    """The saved generative model (``models/generative``), loaded once; ``predict`` on encoded images."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        batch_size: int = 16,
        allow_paths: bool = False,
        limits: ServingConfig | None = None,
    ) -> None:
        from image_emotion.device import pick_device
        from image_emotion.models.generative import load_generative_model

        self.device = pick_device(device)
        model, state = load_generative_model(model_dir)
        self.model = model.to(self.device).eval()
        self.emotion_models: list[str] = list(state["emotion_models"])
        self.trained_on: str | None = state.get("dataset")  # the main training set's dataset
        self.batch_size, self.allow_paths = batch_size, allow_paths
        self.limits = limits or ServingConfig()

    def _chosen(self, emotion_models: Sequence[str] | str | None) -> list[str]:
        if emotion_models is None or emotion_models == "":
            return self.emotion_models
        names = emotion_models.split(",") if isinstance(emotion_models, str) else list(emotion_models)
        names = unique_names(names, "emotion models", "max_emotion_models", self.limits.max_emotion_models)
        unknown = [m for m in names if m not in self.emotion_models]
        if unknown:
            raise BadServedParameter(
                f"emotion model {unknown[0]!r} is not one this model answers; "
                f"it answers {', '.join(self.emotion_models)}"
            )
        return list(names)

    def predict_images(
        self, images: Sequence[Image.Image], emotion_models: Sequence[str] | str | None = None, first: int = 0
    ) -> pd.DataFrame:
        """Decoded images -> the output rows of the module docstring (``image``: ``first`` + the position)."""
        from image_emotion.data.torch_data import preprocess
        from image_emotion.models.templates import get_template

        names = self._chosen(emotion_models)
        model = self.model
        rows = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack(
                [
                    preprocess(img, model.image_size, model.image_mean, model.image_std)
                    for img in images[start : start + self.batch_size]
                ]
            ).to(self.device)
            with torch.inference_mode():
                features = model.encode_images(batch)
                probs = {name: model.label_log_likelihoods(features, name).softmax(-1).cpu() for name in names}
            for offset in range(len(batch)):
                for name in names:
                    labels = get_label_set(name)
                    p = probs[name][offset]
                    label = labels.labels[int(p.argmax())]
                    rows.append(
                        {
                            "image": first + start + offset,
                            "emotion_model": name,
                            "label": label,
                            "confidence": float(p.max()),
                            "polarity": labels.polarity_or_none(label) or "",
                            "distribution": json.dumps(
                                {c: round(float(v), 6) for c, v in zip(labels.labels, p, strict=True)}
                            ),
                            "text": get_template(name).text(label),
                        }
                    )
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)

    def predict(self, frame: pd.DataFrame, emotion_models: Sequence[str] | str | None = None) -> pd.DataFrame:
        """``frame["image"]`` (base64 image files) -> the output rows; a bad cell raises ``ValueError``, a request
        over a limit names it."""
        names = self._chosen(emotion_models)
        fit = Fit(self.model.image_size)
        batches = request_batches(frame, self.limits, self.batch_size, fit, self.allow_paths)
        answers = [self.predict_images(batch, names, first=first) for first, batch in batches]
        return pd.concat(answers, ignore_index=True) if answers else self.predict_images([], names)


class GenerativeModel(PythonModel):
    """MLflow pyfunc wrapper of ``GenerativePredictor`` (artifact ``model``; param ``emotion_models``)."""

    def load_context(self, context: Any) -> None:
        limits = limits_of(getattr(context, "model_config", None))
        self.predictor = GenerativePredictor(context.artifacts["model"], limits=limits)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.predictor.predict(model_input, (params or {}).get("emotion_models") or None)


def log_generative_model(
    mlflow: Any,
    model_dir: str | Path,
    input_example: pd.DataFrame,
    code_paths: Sequence[str | Path],
    pip_requirements: Sequence[str],
    limits: ServingConfig,
) -> Any:
    """Log the generative pyfunc (the model directory as its artifact) with a signature inferred from
    ``input_example`` and its answer, param ``emotion_models`` (default: all) and ``limits`` as its
    ``model_config``; returns the ``ModelInfo``."""
    from mlflow.models import infer_signature

    output_example = GenerativePredictor(model_dir, device="cpu").predict(input_example)
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=GenerativeModel(),
        artifacts={"model": str(model_dir)},
        signature=infer_signature(input_example, output_example, params={"emotion_models": ""}),
        input_example=input_example,
        code_paths=[str(p) for p in code_paths],
        pip_requirements=list(pip_requirements),
        model_config=limits.model_dump(),
    )
