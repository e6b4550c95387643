"""The served retrieval model of seed 002: an MLflow pyfunc that takes encoded images and returns, for each, its
predicted emotion and the ``k`` images nearest in feeling from the saved collection.

Input: a DataFrame with a string column ``image`` - each cell a base64-encoded image file (JPEG, PNG...), decoded
safely (``data/images.py``) one batch at a time, each reduced while decoded to the model's input size, under the
limits the model was logged with (``serving``: rows, bytes, pixels, ``max_k``; over one, HTTP 400 naming it);
optional param ``k`` (default 5). Output: one row per image with ``label`` (the
classifier's prediction), ``polarity`` (positive / negative in the model's label set) and ``neighbours`` - JSON
``[{"rank": 1, "id": "<image path>", "label": "<its label>", "distance": 0.12}, ...]``, nearest first, by Euclidean
distance between the model's retrieval features (``retrieval_feature`` saved with the model: the unit-norm
sentiment vector, the unit-norm FC embedding or both). Works on CPU, uses CUDA when there is one.

``RetrievalPredictor`` is the plain-Python part (the CLI's ``retrieve`` uses it directly, also to search a folder
of images embedded on the fly); ``RetrievalModel`` wraps it for MLflow (artifacts ``model``: the ``.pt`` file,
``index``: the ``EmbeddingIndex`` directory); ``log_retrieval_model`` logs it with a signature and an example.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from image_emotion.config import ServingConfig
from image_emotion.data.emotions import get_label_set
from image_emotion.data.images import Fit
from image_emotion.errors import ConfigError
from image_emotion.retrieval import EmbeddingIndex
from image_emotion.tracking.served_input import checked_k, limits_of, request_batches

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency; this keeps the predictor importable without it
    PythonModel = object

DEFAULT_K = 5


def default_k(limits: ServingConfig) -> int:
    """The neighbours a request gets without ``k``: 5, or ``serving.max_k`` when that is lower."""
    return min(DEFAULT_K, limits.max_k)


OUTPUT_COLUMNS = ["label", "polarity", "neighbours"]


def found(distances: np.ndarray, positions: np.ndarray) -> list[tuple[float, int]]:
    """One query's ``(distance, position)`` pairs, nearest first, without the places the index left unfilled
    (position ``-1``: HNSW reached fewer than ``k`` items)."""
    return [(float(d), int(p)) for d, p in zip(distances, positions, strict=True) if p >= 0]


class RetrievalPredictor:
    """The sentiment-vector model and (optionally) a saved ``EmbeddingIndex``, loaded from their files.

    ``index_dir=None`` loads the model only: ``embed_and_classify`` and ``search(..., index=...)`` on a collection
    built by the caller still work. Missing files raise ``ConfigError`` saying how to make them.
    """

    def __init__(
        self,
        model_path: str | Path,
        index_dir: str | Path | None = None,
        device: str = "auto",
        batch_size: int = 32,
        limits: ServingConfig | None = None,
    ) -> None:
        from image_emotion.device import pick_device
        from image_emotion.models.metric import load_metric_model

        model_path = Path(model_path)
        if not model_path.is_file():
            raise ConfigError(
                f"{model_path}: metric model not found; run `dvc repro` (or `image-emotion train-metric`)"
            )
        self.index: EmbeddingIndex | None = None
        if index_dir is not None:
            index_dir = Path(index_dir)
            if not (index_dir / "index.json").is_file():
                raise ConfigError(
                    f"{index_dir}: retrieval index not found; run `dvc repro` (or `image-emotion build-index`)"
                )
            self.index = EmbeddingIndex.load(index_dir)
        self.device = pick_device(device)
        model, state = load_metric_model(model_path)
        self.model = model.to(self.device).eval()
        self.model_path, self.index_dir = model_path, index_dir
        self.label_set = get_label_set(state.get("label_set", "mikels8"))
        self.trained_on: str | None = state.get("dataset")  # the training set's dataset
        self.image_size = int(state.get("image_size", 96))
        self.mean, self.std = list(state["image_mean"]), list(state["image_std"])
        self.feature = state.get("retrieval_feature", "sentiment")
        if self.feature not in ("sentiment", "fc", "joint"):
            raise ConfigError(f"{model_path}: unknown retrieval_feature {self.feature!r}; retrain the model")
        self.batch_size, self.limits = batch_size, limits or ServingConfig()

    def embed_and_classify(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Retrieval features ``(N, D)`` float32 and predicted class ids ``(N,)`` of ``images``, in batches."""
        from image_emotion.data.torch_data import preprocess

        features, classes = [], []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = torch.stack(
                    [
                        preprocess(img, self.image_size, self.mean, self.std)
                        for img in images[start : start + self.batch_size]
                    ]
                )
                out = self.model(batch.to(self.device))
                features.append(out[self.feature].float().cpu().numpy())
                classes.append(out["logits"].argmax(-1).cpu().numpy())
        if not features:
            return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
        return np.concatenate(features).astype(np.float32), np.concatenate(classes).astype(np.int64)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Retrieval features ``(N, D)`` of ``images`` (the model's saved ``retrieval_feature``)."""
        return self.embed_and_classify(images)[0]

    def _neighbours(self, features: np.ndarray, k: int, index: EmbeddingIndex | None) -> list[list[dict[str, Any]]]:
        index = index if index is not None else self.index
        if index is None:
            raise ConfigError("no index to search: give the predictor an index directory or a collection")
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if features.shape[1] != index.embeddings.shape[1]:
            raise ConfigError(
                f"{self.index_dir or 'the collection'}: the index holds {index.embeddings.shape[1]}-d vectors but "
                f"{self.model_path} gives {features.shape[1]}-d {self.feature!r} features; rebuild the index with "
                "this model (`image-emotion build-index`)"
            )
        distances, positions = index.search(features, k)
        answers = []
        for dist_row, pos_row in zip(distances, positions, strict=True):
            answers.append(
                [
                    {
                        "rank": rank,
                        "id": index.ids[int(p)],
                        "label": self._label_name(index, int(p)),
                        "distance": round(float(d), 6),
                    }
                    for rank, (d, p) in enumerate(found(dist_row, pos_row), start=1)
                ]
            )
        return answers

    def _label_name(self, index: EmbeddingIndex, position: int) -> str | None:
        if index.labels is None:
            return None
        label = index.labels[position]
        return self.label_set.labels[label] if 0 <= label < len(self.label_set) else str(label)

    def search(
        self, images: Sequence[Image.Image], k: int = DEFAULT_K, index: EmbeddingIndex | None = None
    ) -> list[list[dict[str, Any]]]:
        """For each image, its ``k`` nearest items of ``index`` (default: the loaded one) as
        ``[{"rank", "id", "label", "distance"}, ...]``, nearest first."""
        return self._neighbours(self.embed_images(images), k, index)

    def query(
        self, images: Sequence[Image.Image], k: int = DEFAULT_K, index: EmbeddingIndex | None = None
    ) -> list[dict[str, Any]]:
        """For each image ``{"label", "polarity", "neighbours": [...]}`` with one forward pass a batch."""
        features, classes = self.embed_and_classify(images)
        neighbours = self._neighbours(features, k, index) if len(images) else []
        out = []
        for c, found in zip(classes, neighbours, strict=True):
            label = self.label_set.labels[int(c)]
            out.append({"label": label, "polarity": self.label_set.polarity_or_none(label), "neighbours": found})
        return out

    def predict(self, frame: pd.DataFrame, k: Any = DEFAULT_K) -> pd.DataFrame:
        """One row per cell of ``frame["image"]`` (base64 image files): ``label``, ``polarity``, ``neighbours``
        (JSON text). A bad cell raises ``ValueError`` naming its row; a request over a limit names it."""
        k = checked_k(k, self.limits)
        rows: list[dict[str, Any]] = []
        for _, batch in request_batches(frame, self.limits, self.batch_size, Fit(self.image_size)):
            rows += [{**r, "neighbours": json.dumps(r["neighbours"])} for r in self.query(batch, k)]
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


class RetrievalModel(PythonModel):
    """MLflow pyfunc wrapper of ``RetrievalPredictor`` (artifacts ``model`` and ``index``; param ``k``; the
    limits it was logged with in its ``model_config``)."""

    def load_context(self, context: Any) -> None:
        limits = limits_of(getattr(context, "model_config", None))
        self.predictor = RetrievalPredictor(context.artifacts["model"], context.artifacts["index"], limits=limits)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        k = (params or {}).get("k")
        return self.predictor.predict(model_input, k=default_k(self.predictor.limits) if k is None else k)


def log_retrieval_model(
    mlflow: Any,
    model_path: str | Path,
    index_dir: str | Path,
    input_example: pd.DataFrame,
    code_paths: Sequence[str | Path],
    pip_requirements: Sequence[str],
    limits: ServingConfig,
) -> Any:
    """Log the retrieval pyfunc (model file + index directory as artifacts, ``code_paths`` as its code) with a
    signature inferred from ``input_example`` and its answer, param ``k`` (default 5) and ``limits`` as its
    ``model_config``; returns the ``ModelInfo``."""
    from mlflow.models import infer_signature

    k = default_k(limits)
    output_example = RetrievalPredictor(model_path, index_dir, device="cpu", limits=limits).predict(input_example, k=k)
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=RetrievalModel(),
        artifacts={"model": str(model_path), "index": str(index_dir)},
        signature=infer_signature(input_example, output_example, params={"k": k}),
        input_example=input_example,
        code_paths=[str(p) for p in code_paths],
        pip_requirements=list(pip_requirements),
        model_config=limits.model_dump(),
    )
