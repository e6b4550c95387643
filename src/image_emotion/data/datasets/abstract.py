"""Abstract (Machajdik & Hanbury 2010): ``testImages_abstract/`` + ``ABSTRACT_groundTruth.csv``.

The CSV's names and header are single-quoted (``'abstract_0001.jpg'``); its 8 vote-count columns are
Amusement, Anger, Awe, Content, Disgust, Excitement, Fear, Sad. The label is the top vote; images whose
top vote is tied, or that have no votes, are left out (228 usable images remain in the real set).
The vote distribution is kept (Mikels-8 order). Split scheme: 5 stratified folds.
"""

from __future__ import annotations

from pathlib import Path

from image_emotion.data import csv_rows
from image_emotion.data.datasets.base import (
    Collector,
    LoaderOptions,
    LoadResult,
    first_existing_dir,
    normalise_label,
    require_dir,
    require_file,
)
from image_emotion.data.emotions import MIKELS8, distribution_from_votes, dominant_label
from image_emotion.data.safe_paths import relative_path
from image_emotion.errors import DatasetError

CSV_NAME = "ABSTRACT_groundTruth.csv"


def read_votes(csv_path: Path) -> list[tuple[str, dict[str, float]]]:
    """``(image name, {mikels label: votes})`` for each row of the ground-truth CSV; a name must be a relative path
    without ``..`` (``safe_paths``), else a one-line ``DatasetError`` names the line."""
    rows = csv_rows.rows(csv_path, quotechar="'", skipinitialspace=True)
    if not rows:
        raise DatasetError(f"{csv_path}: empty file; expected a header and one row per image")
    header = [normalise_label(h) for h in rows[0]]
    missing = [e for e in MIKELS8.labels if e not in header]
    if missing:
        raise DatasetError(f"{csv_path}: header lacks vote column(s) {', '.join(missing)}; is this {CSV_NAME}?")
    cols = {e: header.index(e) for e in MIKELS8.labels}
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        try:
            votes = {e: float(row[i]) for e, i in cols.items()}
        except (ValueError, IndexError):
            raise DatasetError(f"{csv_path} line {n}: vote counts must be numbers, got {row}") from None
        if any(v < 0 or v != v for v in votes.values()):
            raise DatasetError(f"{csv_path} line {n}: vote counts must be non-negative numbers, got {row}")
        name = row[0].strip().strip("'\"")
        relative_path(name, f"{csv_path} line {n}")
        out.append((name, votes))
    return out


def load(root: Path, options: LoaderOptions) -> LoadResult:
    """Manifest of the Abstract images with a unique top vote."""
    base = first_existing_dir(require_dir(root, "the Abstract dataset"), "testImages_abstract")
    csv_path = require_file(base / CSV_NAME, f"the Abstract vote file {CSV_NAME}")
    collector = Collector(root, options)
    for name, votes in read_votes(csv_path):
        label = dominant_label(votes)
        if label is None:
            collector.skip(base / name, "top vote is tied or there are no votes (dropped, as in the paper)", bad=False)
            continue
        dist = distribution_from_votes([votes[e] for e in MIKELS8.labels]).tolist()
        collector.add(base / name, label, "mikels8", distribution=dist)
    return collector.result("folds", "Abstract")
