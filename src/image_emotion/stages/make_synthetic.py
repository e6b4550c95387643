"""Stage ``make_synthetic``: draw every synthetic set (params ``synthetic.sets``) under one directory.

``<out_dir>/<name>`` for each set: ``objects`` (every object boxed with its shape: the object pre-training,
COCO's role), ``regions`` (emotional-region boxes: the detector's fine-tuning, EmotionROI's role), ``main``
(votes: the classifier, FI's role) and the small transfer sets. Each set follows from its own seed.
"""

from __future__ import annotations

from typing import Any

from image_emotion.config import Config
from image_emotion.data.synthetic import generate
from image_emotion.files import atomic_dir
from image_emotion.stages.paths import MakeSyntheticPaths


def run(config: Config, paths: MakeSyntheticPaths) -> dict[str, Any]:
    """Generate every set atomically; returns their sizes."""
    with atomic_dir(paths.out_dir) as tmp:
        for name in config.synthetic.sets:
            generate(tmp / name, config.synthetic, name)
    sizes = {name: s.num_images for name, s in config.synthetic.sets.items()}
    return {"sets": sizes, "image_size": config.synthetic.image_size, "out_dir": str(paths.out_dir)}
