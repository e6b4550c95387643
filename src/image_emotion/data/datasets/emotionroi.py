"""EmotionROI (Peng et al. 2016): 1,980 images in 6 Ekman classes with emotion-stimuli heat maps.

Layout: ``images/<emo>/<n>.jpg``, ``ground_truth/<emo>/<n>.jpg`` (grey heat maps), and the official
split ``training_testing_split/{training,testing}.txt`` (one ``<emo>/<n>.jpg`` a line). Heat maps become
emotional-region boxes: pixels at or above ``threshold`` x the map's maximum, one box per connected blob
of at least ``min_area`` of the image (``data.emotionroi`` in params.yaml). Split scheme: official.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from image_emotion.data.datasets.base import (
    Collector,
    LoaderOptions,
    LoadResult,
    normalise_label,
    require_dir,
    require_file,
)
from image_emotion.data.emotions import EKMAN6
from image_emotion.data.images import is_image_name, load_image
from image_emotion.data.safe_paths import inside
from image_emotion.errors import ImageDecodeError


def heatmap_boxes(heat: np.ndarray, threshold: float = 0.5, min_area: float = 0.005) -> list[list[float]]:
    """Boxes ``[x1, y1, x2, y2]`` (pixels, exclusive ends) of blobs of ``heat >= threshold * max``.

    ``heat``: shape ``(H, W)``, any non-negative scale. Blobs smaller than ``min_area * H * W`` are
    dropped unless none is larger, in which case the largest is kept. Largest blob first.
    """
    peak = float(heat.max(initial=0.0))
    if peak <= 0:
        return []
    mask = heat >= threshold * peak
    labelled, count = ndimage.label(mask)
    slices = ndimage.find_objects(labelled)
    areas = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-areas, kind="stable")
    keep = [i for i in order if areas[i] >= min_area * heat.size] or [int(order[0])]
    return [
        [float(slices[i][1].start), float(slices[i][0].start), float(slices[i][1].stop), float(slices[i][0].stop)]
        for i in keep
    ]


def _read_split(path: Path) -> set[str]:
    lines = require_file(path, "EmotionROI's official split file").read_text(encoding="utf-8-sig").splitlines()
    return {line.strip().removeprefix("images/") for line in lines if line.strip()}


def load(root: Path, options: LoaderOptions) -> LoadResult:
    """Manifest of every EmotionROI image, with heat-map boxes and the official split."""
    threshold, min_area = options.data.emotionroi.threshold, options.data.emotionroi.min_area
    images = require_dir(root / "images", "EmotionROI's images/<emotion>/<n>.jpg")
    heatmaps = require_dir(root / "ground_truth", "EmotionROI's ground_truth/<emotion>/<n>.jpg heat maps")
    split_dir = root / "training_testing_split"
    train, test = _read_split(split_dir / "training.txt"), _read_split(split_dir / "testing.txt")
    collector = Collector(root, options)
    for sub in sorted(p for p in images.iterdir() if p.is_dir()):
        label = normalise_label(sub.name)
        for f in sorted(p for p in sub.iterdir() if p.is_file()):
            if label not in EKMAN6.labels:
                collector.skip(f, f"unknown label directory {sub.name!r} (expected one of {', '.join(EKMAN6.labels)})")
                continue
            if f.name.startswith(".") or not is_image_name(f):
                collector.skip(f, "not an image file (ignored)", bad=False)
                continue
            key = f"{sub.name}/{f.name}"
            inside(root, f.relative_to(root), str(root))  # both files stay inside the root before either is opened
            heat_path = inside(root, heatmaps.relative_to(root) / key, str(root))
            try:
                heat = np.asarray(load_image(heat_path, options.max_pixels).convert("L"), dtype=np.float64)
                with Image.open(f) as im:
                    width, height = im.size
            except (ImageDecodeError, OSError) as exc:
                collector.skip(f, f"heat map or image unreadable ({exc})")
                continue
            sx, sy = width / heat.shape[1], height / heat.shape[0]
            boxes = [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in heatmap_boxes(heat, threshold, min_area)]
            split = "train" if key in train else "test" if key in test else ""
            collector.add(f, label, "ekman6", boxes=boxes, split=split)
    return collector.result("official", "EmotionROI")
