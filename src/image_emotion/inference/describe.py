"""Seed 001's generative model on images: each image's label in every emotion model it answers."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class Description:
    """One image in one emotion model. distribution: ``{label: probability}``; text: the filled template."""

    emotion_model: str
    label: str
    confidence: float
    polarity: str
    distribution: dict[str, float]
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe(images: list[Image.Image], predictor: Any, emotion_models: str = "") -> list[list[Description]]:
    """For each image, one ``Description`` an emotion model (``emotion_models``: comma-separated, empty: all the
    model answers). ``predictor``: ``tracking.generative_pyfunc.GenerativePredictor``."""
    out: list[list[Description]] = [[] for _ in images]
    if not images:
        return out
    for row in predictor.predict_images(images, emotion_models or None).to_dict("records"):
        out[int(row["image"])].append(
            Description(
                emotion_model=row["emotion_model"],
                label=row["label"],
                confidence=float(row["confidence"]),
                polarity=row["polarity"] or "",
                distribution=json.loads(row["distribution"]),
                text=row["text"],
            )
        )
    return out
