"""Seed 000's model on images: emotion, confidence, polarity and the emotional regions of each."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class Prediction:
    """One image's answer. regions: ``{"x1", "y1", "x2", "y2", "score"}`` in the image's pixels (score: S_emo =
    √(p_emo² + p_obj²) in [0, √2], eq. 3), the best first."""

    label: str
    polarity: str  # "" for a label without one
    confidence: float  # the label's probability
    probabilities: dict[str, float]
    regions: list[dict[str, float]]
    size: tuple[int, int]  # (width, height)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "size": list(self.size)}


def predict(images: list[Image.Image], predictor: Any, batch_size: int = 8) -> list[Prediction]:
    """One ``Prediction`` an image, ``batch_size`` images a forward pass (a progress bar on stderr for more than one
    batch). ``predictor``: ``tracking.pyfunc.EmotionPredictor``."""
    from tqdm import tqdm

    out: list[Prediction] = []
    starts = range(0, len(images), batch_size)
    with tqdm(total=len(images), unit="img", file=sys.stderr, disable=len(starts) < 2) as bar:
        for start in starts:
            chunk = images[start : start + batch_size]
            for image, row in zip(chunk, predictor.predict_images(chunk).to_dict("records"), strict=True):
                probabilities = {k: float(v) for k, v in row.items() if k not in ("label", "polarity", "regions")}
                out.append(
                    Prediction(
                        label=row["label"],
                        polarity=row.get("polarity") or "",
                        confidence=probabilities[row["label"]],
                        probabilities=probabilities,
                        regions=json.loads(row["regions"]),
                        size=image.size,
                    )
                )
            bar.update(len(chunk))
    return out


def write_overlays(
    results: dict[Path, Prediction], images: dict[Path, Image.Image], out_dir: Path, min_score: float | None = None
) -> list[Path]:
    """``out_dir/<name>.png`` for each image: its top regions scoring at least ``min_score`` (default
    ``figures.MIN_DRAWN_SCORE``) drawn, captioned with emotion, confidence, polarity, with a legend (names made
    unique when two images share a file name)."""
    from image_emotion.figures import MIN_DRAWN_SCORE, region_overlay
    from image_emotion.files import atomic_path

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path, r in results.items():
        target = out_dir / f"{path.stem}.png"
        n = 1
        while target in written:
            n += 1
            target = out_dir / f"{path.stem}-{n}.png"
        caption = f"{r.label}: probability {r.confidence:.2f} ({r.polarity or 'no polarity'})"
        with atomic_path(target) as tmp:
            threshold = MIN_DRAWN_SCORE if min_score is None else min_score
            region_overlay(images[path], r.regions, caption, min_score=threshold).save(tmp, format="PNG")
        written.append(target)
    return written
