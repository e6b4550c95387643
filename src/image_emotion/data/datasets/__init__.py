"""Dataset loaders, one module a published layout; ``load_dataset`` picks one by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from image_emotion.data.datasets import abstract, artphoto, emoset, emotion6, emotionroi, fi, iaps, synthetic, twitter
from image_emotion.data.datasets.base import LoaderOptions, LoadResult, Skipped
from image_emotion.errors import ConfigError

LOADERS: dict[str, Callable[[Path, LoaderOptions], LoadResult]] = {
    "synthetic": synthetic.load,
    "fi": fi.load,
    "emotionroi": emotionroi.load,
    "iaps": iaps.load,
    "artphoto": artphoto.load,
    "abstract": abstract.load,
    "emotion6": emotion6.load,
    "twitter": twitter.load,
    "emoset": emoset.load,
}


def load_dataset(name: str, root: str | Path, options: LoaderOptions | None = None) -> LoadResult:
    """Load dataset ``name`` from its published layout under ``root``."""
    try:
        loader = LOADERS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r} (data.dataset); expected one of {', '.join(LOADERS)}") from None
    return loader(Path(root), options or LoaderOptions())


__all__ = ["LOADERS", "LoadResult", "LoaderOptions", "Skipped", "load_dataset"]
