"""The embedded default dataset (``data/synthetic.py``): ``images/<id>.png`` + ``annotations.csv``.

``annotations.csv`` columns: ``path, label, label_set, votes, boxes`` (label_set: mikels8 or ekman6, mikels8
when the column is absent; votes: JSON list of counts in that set's order; boxes: JSON list of
``[x1, y1, x2, y2]``). Split scheme: random stratified 80/5/15.
"""

from __future__ import annotations

import json
from pathlib import Path

from image_emotion.data.csv_rows import dict_rows
from image_emotion.data.datasets.base import Collector, LoaderOptions, LoadResult, require_dir, require_file
from image_emotion.data.emotions import distribution_from_votes
from image_emotion.data.safe_paths import inside
from image_emotion.data.synthetic import ANNOTATIONS
from image_emotion.errors import ConfigError, DatasetError


def load(root: Path, options: LoaderOptions) -> LoadResult:
    """Manifest of every synthetic image listed in ``annotations.csv``."""
    ann = require_file(require_dir(root, "the synthetic dataset") / ANNOTATIONS, "the synthetic annotations.csv")
    collector = Collector(root, options)
    for n, row in dict_rows(ann):  # n: the file's line (blank lines counted), not the record's number
        try:
            votes, boxes = json.loads(row["votes"]), json.loads(row["boxes"])
            collector.add(
                inside(root, row["path"], f"{ann} line {n}"),
                row["label"],
                row.get("label_set") or "mikels8",
                distribution=distribution_from_votes(votes).tolist(),
                boxes=boxes,
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{ann} line {n}: expected path, label, votes, boxes columns ({exc})") from None
        except ConfigError as exc:  # votes that are not counts
            raise DatasetError(f"{ann} line {n}: {exc}") from None
    return collector.result("random", "synthetic")
