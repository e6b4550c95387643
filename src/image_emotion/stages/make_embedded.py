"""Stage ``make_embedded``: draw the embedded default dataset (params ``embedded``) into a directory."""

from __future__ import annotations

from typing import Any

from image_emotion.config import get
from image_emotion.data.synthetic import SyntheticConfig, generate
from image_emotion.stages.paths import MakeEmbeddedPaths


def config_from_params(params: dict[str, Any]) -> SyntheticConfig:
    """The ``embedded`` section of params.yaml as a ``SyntheticConfig``."""
    section = get(params, "embedded", {})
    return SyntheticConfig(**{k: int(v) for k, v in section.items()})


def run(params: dict[str, Any], paths: MakeEmbeddedPaths) -> dict[str, Any]:
    """Generate the dataset atomically; returns its size."""
    config = config_from_params(params)
    generate(paths.out_dir, config)
    return {"num_images": config.num_images, "image_size": config.image_size, "out_dir": str(paths.out_dir)}
