"""The served model: an MLflow pyfunc that takes encoded images and returns label, polarity, probabilities, regions.

Input: a DataFrame with a column ``image`` - each cell base64 text of an image file (JPEG, PNG...; a ``data:`` URI
too) or raw bytes, decoded safely (``tracking/served_input.py``; a bad cell is an HTTP 400 naming its row) and
checked against the limits the model was logged with (``serving`` in params.yaml; over one: HTTP 400 naming it).
The CLI's in-process predictor also takes file paths. Output: one row per image with ``label``, ``polarity``
(positive / negative of that label; empty for a label without one), one probability column per class of the
model's label set (calibrated: the logits divided by the temperature fitted on validation, ``calibration.py``),
and ``regions`` - JSON ``[{"x1", "y1", "x2", "y2", "score"}, ...]`` of the top emotional regions, best first: the box
in the file's pixels and S_emo = √(p_emo² + p_obj²) in [0, √2], Rao et al.'s eq. 3 (0: the whole-image box that
pads an image with fewer than K regions).
Images are decoded and go through the model ``batch_size`` at a time, each reduced while decoded to what the
detector reads (its ``min_size`` / ``max_size``); regions are mapped back. Works on CPU, uses CUDA when there is one.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torchvision.transforms.functional import to_tensor

from image_emotion.config import ServingConfig
from image_emotion.data.emotions import get_label_set
from image_emotion.data.images import Fit
from image_emotion.tracking.served_input import limits_of, request_batches

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency; this keeps serve importable without it
    PythonModel = object


def encode_image_file(path: str | Path) -> str:
    """Base64 text of an image file, as the ``image`` column expects."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def input_example(prepared: str | Path, count: int = 2) -> pd.DataFrame:
    """The logged models' input example: the first ``count`` test images of a prepared dataset, encoded."""
    from image_emotion.data.torch_data import PreparedDataset

    data = PreparedDataset.load(prepared)
    return pd.DataFrame(
        {"image": [encode_image_file(data.root / p) for p in data.split("test").manifest["path"].head(count)]}
    )


class EmotionPredictor:
    """Detector + multi-level head loaded from their files; ``predict`` on a DataFrame of encoded images."""

    def __init__(
        self,
        detector_path: str | Path,
        head_path: str | Path,
        device: str = "auto",
        batch_size: int = 8,
        allow_paths: bool = False,
        limits: ServingConfig | None = None,
    ) -> None:
        from image_emotion.device import pick_device
        from image_emotion.models.multilevel import MultiLevelClassifier, load_head
        from image_emotion.models.region_detector import load_detector

        self.device = pick_device(device)
        head, state = load_head(Path(head_path))
        self.label_set = get_label_set(state["label_set"])
        self.temperature = float(state.get("temperature", 1.0))  # fitted on validation (calibration.py)
        self.trained_on: str | None = state.get("dataset")  # the training set's dataset (None: an older head)
        self.labels = self.label_set.labels
        self.model = MultiLevelClassifier(load_detector(detector_path, self.device), head.to(self.device)).eval()
        self.batch_size, self.allow_paths = batch_size, allow_paths
        self.limits = limits or ServingConfig()
        transform = self.model.detector.transform
        self.fit = Fit(int(transform.min_size[-1]), int(transform.max_size))

    def predict_images(self, images: list) -> pd.DataFrame:
        """Decoded RGB images -> the output rows described in the module docstring (regions in the pixels of
        ``info["original_size"]`` where an image was reduced while decoded, else in its own)."""
        rows = []
        for start in range(0, len(images), self.batch_size):
            batch = [to_tensor(img).to(self.device) for img in images[start : start + self.batch_size]]
            with torch.inference_mode():
                logits, feats = self.model(batch)
            probs = (logits / self.temperature).softmax(-1).cpu()  # calibrated on validation
            sizes = [img.info.get("original_size", img.size) for img in images[start : start + self.batch_size]]
            scales = [
                torch.tensor([w / img.width, h / img.height] * 2)
                for (w, h), img in zip(sizes, images[start : start + self.batch_size], strict=True)
            ]
            boxes_in_files = [b * s for b, s in zip(feats.emotional_boxes.cpu(), scales, strict=True)]
            for p, boxes, scores in zip(probs, boxes_in_files, feats.emotional_scores.cpu(), strict=True):
                regions = [
                    {**dict(zip(("x1", "y1", "x2", "y2"), (round(float(v), 1) for v in b), strict=True)),
                     "score": round(float(s), 4)}
                    for b, s in zip(boxes, scores, strict=True)
                ]  # fmt: skip
                label = self.labels[int(p.argmax())]
                rows.append(
                    {
                        "label": label,
                        "polarity": self.label_set.polarity_or_none(label) or "",  # a string column
                        **{c: float(v) for c, v in zip(self.labels, p, strict=True)},
                        "regions": json.dumps(regions),
                    }
                )
        return pd.DataFrame(rows, columns=["label", "polarity", *self.labels, "regions"])

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A request (see the module docstring) checked, then decoded and answered one batch at a time."""
        batches = request_batches(frame, self.limits, self.batch_size, self.fit, self.allow_paths)
        answers = [self.predict_images(batch) for _, batch in batches]
        return pd.concat(answers, ignore_index=True) if answers else self.predict_images([])


class EmotionModel(PythonModel):
    """MLflow pyfunc wrapper of ``EmotionPredictor`` (artifacts ``detector`` and ``head``; the limits it was
    logged with in its ``model_config``)."""

    def load_context(self, context: Any) -> None:
        limits = limits_of(getattr(context, "model_config", None))
        self.predictor = EmotionPredictor(context.artifacts["detector"], context.artifacts["head"], limits=limits)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.predictor.predict(model_input)
