"""Emotion6 (Peng et al. 2015): ``images/<emotion>/<n>.jpg`` + tab-separated ``ground_truth.txt``.

Each line: image path (relative to ``images/``), valence, arousal, then 7 probabilities (anger, disgust,
fear, joy, sadness, surprise, neutral). The label is the most probable of the 7 (label set ``emotion6``);
ties are left out. Split scheme: random stratified 80/5/15.
"""

from __future__ import annotations

from pathlib import Path

from image_emotion.data.datasets.base import (
    Collector,
    LoaderOptions,
    LoadResult,
    first_existing_dir,
    require_dir,
    require_file,
)
from image_emotion.data.emotions import EMOTION6, distribution_from_votes, dominant_label
from image_emotion.data.safe_paths import inside
from image_emotion.errors import ConfigError, DatasetError


def load(root: Path, options: LoaderOptions) -> LoadResult:
    """Manifest of every Emotion6 image listed in ``ground_truth.txt``."""
    base = first_existing_dir(require_dir(root, "the Emotion6 dataset"), "Emotion6")
    gt = require_file(base / "ground_truth.txt", "Emotion6's ground_truth.txt")
    images = base / "images"
    collector = Collector(root, options)
    for n, line in enumerate(gt.read_text(encoding="utf-8-sig").splitlines(), start=1):
        cells = [c.strip() for c in line.split("\t")]
        if not line.strip() or cells[0].startswith("["):  # blank or the header "[image_filename] ..."
            continue
        if len(cells) < 10:
            raise DatasetError(f"{gt} line {n}: expected path, valence, arousal and 7 probabilities (tab-separated)")
        try:
            probs = [float(c) for c in cells[3:10]]
        except ValueError:
            raise DatasetError(f"{gt} line {n}: probabilities must be numbers, got {cells[3:10]}") from None
        path = inside(images, cells[0], f"{gt} line {n}")
        label = dominant_label(dict(zip(EMOTION6.labels, probs, strict=True)))
        if label is None:
            collector.skip(path, "top probability is tied (dropped)", bad=False)
            continue
        try:
            distribution = distribution_from_votes(probs).tolist()
        except ConfigError as exc:
            raise DatasetError(f"{gt} line {n}: {exc}") from None
        collector.add(path, label, "emotion6", distribution=distribution)
    return collector.result("random", "Emotion6")
