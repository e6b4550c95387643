"""Stage ``make_synthetic``: draw the synthetic default dataset (params ``synthetic``) into a directory."""

from __future__ import annotations

from typing import Any

from image_emotion.config import Config
from image_emotion.data.synthetic import generate
from image_emotion.stages.paths import MakeSyntheticPaths


def run(config: Config, paths: MakeSyntheticPaths) -> dict[str, Any]:
    """Generate the dataset atomically; returns its size."""
    generate(paths.out_dir, config.synthetic)
    return {
        "num_images": config.synthetic.num_images,
        "image_size": config.synthetic.image_size,
        "out_dir": str(paths.out_dir),
    }
