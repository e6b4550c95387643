"""Twitter I (You et al. 2015): ``images/<name>.jpg`` + ``{five,four,three}_agree.txt``, binary labels.

Each agree file lists ``<name> <0|1>`` (1 = positive) for images on which at least that many of five
workers agreed; ``data.twitter.agreement`` picks the file (default ``five``). Split scheme: random 80/5/15.
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
from image_emotion.data.safe_paths import inside
from image_emotion.errors import DatasetError


def load(root: Path, options: LoaderOptions) -> LoadResult:
    """Manifest of the Twitter I images at the chosen agreement level."""
    agreement = options.data.twitter.agreement
    base = first_existing_dir(require_dir(root, "the Twitter I dataset"), "twitter1", "Twitter_I")
    agree = require_file(base / f"{agreement}_agree.txt", f"Twitter I's {agreement}_agree.txt")
    images = first_existing_dir(base, "images")
    collector = Collector(root, options)
    for n, line in enumerate(agree.read_text(encoding="utf-8-sig").splitlines(), start=1):
        cells = line.replace(",", " ").split()
        if not cells:
            continue
        if len(cells) != 2 or cells[1] not in ("0", "1"):
            raise DatasetError(f"{agree} line {n}: expected '<image name> <0|1>', got {line.strip()!r}")
        label = "positive" if cells[1] == "1" else "negative"
        collector.add(inside(images, cells[0], f"{agree} line {n}"), label, "binary")
    return collector.result("random", "Twitter I")
