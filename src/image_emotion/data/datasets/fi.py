"""FI (You et al. 2016): ``[emotion_dataset/]<emotion>/<emotion>_<id>.jpg``, 8 Mikels classes.

The real copy mixes ``.jpg/.JPG/.png`` and holds some unreadable or non-image files; those are reported.
Split scheme: random stratified 80/5/15 (the paper's).
"""

from __future__ import annotations

from pathlib import Path

from image_emotion.data.datasets.base import (
    Collector,
    LoaderOptions,
    LoadResult,
    collect_label_dirs,
    first_existing_dir,
    require_dir,
)


def load(root: Path, options: LoaderOptions) -> LoadResult:
    """Manifest of every FI image under ``root``."""
    base = first_existing_dir(require_dir(root, "the FI dataset"), "emotion_dataset")
    collector = Collector(root, options)
    collect_label_dirs(collector, base, "mikels8")
    return collector.result("random", "FI")
