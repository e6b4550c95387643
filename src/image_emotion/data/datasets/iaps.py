"""IAPSsubset (Mikels et al. 2005): ``[IAPSsubset/]<emotion>/<image>``, 8 Mikels classes, 395 images.

IAPS pictures are licensed, so copies are arranged by their holders; we read the folder-per-emotion
layout. Split scheme: 5 stratified folds (the paper's transfer protocol).
"""

from __future__ import annotations

from pathlib import Path

from image_emotion.data.datasets.base import LoaderOptions, LoadResult, load_label_dir_dataset


def load(root: Path, options: LoaderOptions) -> LoadResult:
    """Manifest of every IAPSsubset image under ``root``."""
    return load_label_dir_dataset(root, options, "IAPSsubset", "folds", "IAPSsubset")
