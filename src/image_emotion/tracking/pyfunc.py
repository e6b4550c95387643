"""The served model: an MLflow pyfunc that takes encoded images and returns label, probabilities, regions.

Input: a DataFrame with a string column ``image`` - each cell a base64-encoded image file (JPEG, PNG...),
decoded safely (``data/images.py``). Output: one row per image with ``label``, one probability column per
class of the model's label set, and ``regions`` - JSON ``[[x1, y1, x2, y2, S_emo], ...]`` of the top
emotional regions in the image's pixels. Works on CPU, uses CUDA when there is one.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torchvision.transforms.functional import to_tensor

from image_emotion.data.emotions import get_label_set
from image_emotion.data.images import load_image_bytes

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

    def __init__(self, detector_path: str | Path, head_path: str | Path, device: str = "auto") -> None:
        from image_emotion.device import pick_device
        from image_emotion.models.multilevel import MultiLevelClassifier, load_head
        from image_emotion.models.region_detector import load_detector

        self.device = pick_device(device)
        head, state = load_head(Path(head_path))
        self.labels = get_label_set(state["label_set"]).labels
        self.model = MultiLevelClassifier(load_detector(detector_path, self.device), head.to(self.device)).eval()

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        if "image" not in frame.columns:
            raise ValueError("input needs a column 'image' of base64-encoded image files")
        images = []
        for i, cell in enumerate(frame["image"]):
            try:
                raw = base64.b64decode(cell, validate=True)
            except (ValueError, TypeError):
                raise ValueError(f"row {i}: 'image' is not valid base64") from None
            images.append(to_tensor(load_image_bytes(raw, name=f"row {i}")).to(self.device))
        with torch.inference_mode():
            logits, feats = self.model(images)
        probs = logits.softmax(-1).cpu()
        rows = []
        for p, boxes, scores in zip(probs, feats.emotional_boxes.cpu(), feats.emotional_scores.cpu(), strict=True):
            regions = [
                [*map(lambda v: round(float(v), 1), b), round(float(s), 4)] for b, s in zip(boxes, scores, strict=True)
            ]
            rows.append(
                {
                    "label": self.labels[int(p.argmax())],
                    **{c: float(v) for c, v in zip(self.labels, p, strict=True)},
                    "regions": json.dumps(regions),
                }
            )
        return pd.DataFrame(rows, columns=["label", *self.labels, "regions"])


class EmotionModel(PythonModel):
    """MLflow pyfunc wrapper of ``EmotionPredictor`` (artifacts ``detector`` and ``head``)."""

    def load_context(self, context: Any) -> None:
        self.predictor = EmotionPredictor(context.artifacts["detector"], context.artifacts["head"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.predictor.predict(model_input)
