"""The one manifest format every dataset loader returns and every stage reads.

A manifest is a pandas DataFrame, one row an image, with columns

===============  =====================================================================================
``path``         image path relative to the dataset root (POSIX separators)
``label``        the image's (dominant) label, a member of ``label_set``
``label_set``    name of the label set (``mikels8``, ``binary``, ``ekman6``, ``emotion6``)
``distribution`` list of ``len(label_set)`` probabilities summing to 1 (votes), or ``None``
``boxes``        list of ``[x1, y1, x2, y2]`` pixel boxes of emotional regions (may be empty)
``split``        ``train`` / ``val`` / ``test``, ``cv`` for small datasets used by 5-fold CV, or ``""``
``fold``         0..k-1 stratified fold, ``-1`` when not assigned
===============  =====================================================================================

On disk it is a CSV whose ``distribution`` and ``boxes`` cells hold JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from image_emotion.data.emotions import get_label_set
from image_emotion.data.safe_paths import relative_path
from image_emotion.errors import ConfigError, DatasetError
from image_emotion.files import atomic_path

COLUMNS = ("path", "label", "label_set", "distribution", "boxes", "split", "fold")
SPLITS = frozenset({"train", "val", "test", "cv", ""})


def make_manifest(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Build a manifest from row dicts; missing optional fields get their empty values."""
    filled = [
        {
            "path": str(r["path"]),
            "label": str(r["label"]),
            "label_set": str(r["label_set"]),
            "distribution": None if r.get("distribution") is None else [float(x) for x in r["distribution"]],
            "boxes": [[float(c) for c in b] for b in (r.get("boxes") or [])],
            "split": str(r.get("split", "")),
            "fold": int(r.get("fold", -1)),
        }
        for r in rows
    ]
    df = pd.DataFrame(filled, columns=list(COLUMNS))
    return df.astype({"fold": "int64"})


def validate_manifest(df: pd.DataFrame, source: str = "manifest") -> pd.DataFrame:
    """Check columns, paths (relative, no ``..``), labels, distributions, boxes, splits; raise a one-line
    ``DatasetError`` naming ``source``."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{source}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    if df.empty:
        raise DatasetError(f"{source}: no images; check the dataset root and its layout")
    dupes = df["path"][df["path"].duplicated()]
    if not dupes.empty:
        raise DatasetError(f"{source}: image {dupes.iloc[0]!r} listed twice; remove the duplicate row")
    for i, row in enumerate(df.itertuples(index=False)):
        relative_path(row.path, f"{source} row {i + 2}")  # relative, no '..' (symlinks: PreparedDataset.load)
        where = f"{source} row {i + 2} ({row.path})"
        try:
            labels = get_label_set(row.label_set)
        except ConfigError as exc:
            raise DatasetError(f"{where}: {exc}") from None
        if row.label not in labels.labels:
            raise DatasetError(f"{where}: label {row.label!r} is not in {row.label_set} ({', '.join(labels.labels)})")
        if row.distribution is not None:
            dist = list(row.distribution)
            if len(dist) != len(labels) or any(p < 0 or not math.isfinite(p) for p in dist):
                raise DatasetError(f"{where}: distribution needs {len(labels)} non-negative numbers")
            if abs(sum(dist) - 1.0) > 1e-4:
                raise DatasetError(f"{where}: distribution sums to {sum(dist):.4f}, not 1")
        for box in row.boxes:
            if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]) or min(box) < 0:
                raise DatasetError(f"{where}: box {box} is not [x1, y1, x2, y2] with x1<x2, y1<y2, all >= 0")
        if row.split not in SPLITS:
            raise DatasetError(f"{where}: split {row.split!r} is not one of {sorted(SPLITS)}")
    return df


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    """Validate and write ``df`` as CSV atomically (JSON in the list columns)."""
    validate_manifest(df, str(path))
    out = df.copy()
    out["distribution"] = out["distribution"].map(lambda d: "" if d is None else json.dumps(d))
    out["boxes"] = out["boxes"].map(json.dumps)
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, columns=list(COLUMNS))


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a manifest CSV written by ``write_manifest``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: manifest not found; run `image-emotion prepare` (or `dvc repro prepare`)")
    try:
        df = pd.read_csv(path, dtype={"path": str, "label": str, "label_set": str, "split": str}, keep_default_na=False)
        if "distribution" in df:
            df["distribution"] = df["distribution"].map(lambda s: json.loads(s) if s else None)
        if "boxes" in df:
            df["boxes"] = df["boxes"].map(lambda s: json.loads(s) if s else [])
        if "fold" in df:
            df["fold"] = df["fold"].astype("int64")
    except (ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{path}: not a valid manifest CSV ({str(exc).splitlines()[0]})") from None
    return validate_manifest(df, str(path))
