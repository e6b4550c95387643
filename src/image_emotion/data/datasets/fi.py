"""FI (You et al. 2016): ``[emotion_dataset/]<emotion>/<emotion>_<id>.jpg``, 8 Mikels classes.

The real copy mixes ``.jpg/.JPG/.png`` and holds some unreadable or non-image files; those are reported.
Split scheme: random stratified 80/5/15 (the paper's).
"""

from __future__ import annotations

from pathlib import Path

from image_emotion.data.datasets.base import LoaderOptions, LoadResult, load_label_dir_dataset


def load(root: Path, options: LoaderOptions) -> LoadResult:
    """Manifest of every FI image under ``root``."""
    return load_label_dir_dataset(root, options, "emotion_dataset", "random", "FI")
