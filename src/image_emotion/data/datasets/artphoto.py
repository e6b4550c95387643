"""ArtPhoto (Machajdik & Hanbury 2010): flat ``testImages_artphoto/<emotion>_<n>.jpg``, 806 images.

The label is the file-name prefix before ``_`` (``sad`` means sadness); stray files (``.DS_Store``,
``.rtf``) beside the images are ignored. Split scheme: 5 stratified folds.
"""

from __future__ import annotations

from pathlib import Path

from image_emotion.data.datasets.base import (
    Collector,
    LoaderOptions,
    LoadResult,
    first_existing_dir,
    normalise_label,
    require_dir,
)
from image_emotion.data.emotions import MIKELS8
from image_emotion.data.images import is_image_name


def load(root: Path, options: LoaderOptions) -> LoadResult:
    """Manifest of every ArtPhoto image under ``root``."""
    base = first_existing_dir(require_dir(root, "the ArtPhoto dataset"), "testImages_artphoto")
    collector = Collector(root, options)
    for f in sorted(p for p in base.iterdir() if p.is_file()):
        if f.name.startswith(".") or not is_image_name(f):
            collector.skip(f, "not an image file (ignored)", bad=False)
            continue
        label = normalise_label(f.name.split("_", 1)[0])
        if "_" not in f.name or label not in MIKELS8.labels:
            collector.skip(f, f"file name prefix {f.name.split('_', 1)[0]!r} is not a Mikels emotion")
            continue
        collector.add(f, label, "mikels8")
    return collector.result("folds", "ArtPhoto")
