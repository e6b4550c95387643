"""EmoSet-118K (Yang et al., ICCV 2023): 118,102 images in 8 Mikels classes, with emotion attributes.

Layout (the authors' README and ``EmoSet.py`` in github.com/JingyuanYY/EmoSet)::

    info.json                          label <-> index maps of the emotions and of each attribute
    train.json, val.json, test.json    the official split: a JSON list of
                                       [emotion, image id, "image/<emotion>/<id>.jpg", "annotation/<emotion>/<id>.json"]
    image/<emotion>/<id>.jpg
    annotation/<emotion>/<id>.json     one JSON object an image with the attributes it has (absent keys: unknown):
                                       brightness, colorfulness (0.0..1.0 in steps of 0.1), scene, facial_expression,
                                       human_action (one name each), object (a list of names)

The split-file entry format is the README's example; the annotation keys and their kinds are those the
authors' ``EmoSet.py`` reads (its multi-class and multi-label attribute lists, the value grids in the
published ``info.json``); the repository shows no annotation file itself.
The manifest is built from the three split files alone (they carry the image path and the emotion), so no
annotation JSON and not ``info.json`` is read for it; an image on disk that no split file lists is not in the
manifest. Paths in the split files are relative to the root (backslashes are read as ``/``). Split scheme:
official, ``split`` is ``train``/``val``/``test`` as published. A listed image that is missing (or, with
``data.check_images``, does not decode) is a bad file for ``data.on_error``; an unknown emotion, a malformed
entry or an image listed twice is a one-line error naming the split file and the entry. The attributes are
not manifest columns: ``read_attributes`` reads them (one annotation JSON per image) into a table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from image_emotion.data.datasets.base import (
    Collector,
    LoaderOptions,
    LoadResult,
    OnError,
    normalise_label,
    require_dir,
    require_file,
)
from image_emotion.data.emotions import MIKELS8
from image_emotion.data.safe_paths import inside, relative_path
from image_emotion.errors import DatasetError

SPLITS = ("train", "val", "test")
SCALAR_ATTRIBUTES = ("brightness", "colorfulness")
"""Numbers in 0.0..1.0 (NaN when absent)."""
NAME_ATTRIBUTES = ("scene", "facial_expression", "human_action")
"""One name each (missing, ``pandas.isna``, when absent)."""
LIST_ATTRIBUTES = ("object",)
"""A list of names (empty when absent)."""
ATTRIBUTES = SCALAR_ATTRIBUTES + NAME_ATTRIBUTES + LIST_ATTRIBUTES


def _relative(value: Any, split_file: Path, n: int) -> PurePosixPath:
    """A root-relative path from a split-file entry; absolute paths, ``..`` and drive letters are refused."""
    rel = relative_path(str(value).strip().replace("\\", "/"), f"{split_file} entry {n}")
    if ":" in rel.parts[0]:
        raise DatasetError(f"{split_file} entry {n}: path {value!r} is not relative to the EmoSet root (drive)")
    return rel


def read_split(root: Path, split: str) -> list[tuple[str, PurePosixPath, PurePosixPath | None]]:
    """``(emotion, image path, annotation path or None)`` per entry of ``<root>/<split>.json``, in file order.

    Raises a one-line ``DatasetError`` naming the file (and the 1-based entry) for a missing or malformed
    file and for an emotion outside Mikels' eight.
    """
    path = require_file(root / f"{split}.json", f"EmoSet's official split file {split}.json")
    try:
        entries = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"{path}: not valid JSON ({str(exc).splitlines()[0]}); restore it from the archive"
        ) from None
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: expected a JSON list of [emotion, image id, image path, annotation path]")
    out = []
    for n, entry in enumerate(entries, start=1):
        if not isinstance(entry, list) or len(entry) < 3 or not all(isinstance(c, str) for c in entry[:4]):
            raise DatasetError(
                f"{path} entry {n}: expected [emotion, image id, image path, annotation path], got {entry!r}"
            )
        label = normalise_label(entry[0])
        if label not in MIKELS8.labels:
            raise DatasetError(
                f"{path} entry {n} ({entry[2]}): unknown emotion {entry[0]!r} "
                f"(expected one of {', '.join(MIKELS8.labels)})"
            )
        annotation = _relative(entry[3], path, n) if len(entry) > 3 else None
        out.append((label, _relative(entry[2], path, n), annotation))
    return out


def load(root: Path, options: LoaderOptions) -> LoadResult:
    """Manifest of every image listed in EmoSet's ``train.json``, ``val.json`` and ``test.json``."""
    require_dir(root, "the EmoSet dataset (info.json, train/val/test.json, image/, annotation/)")
    collector = Collector(root, options)
    seen: dict[PurePosixPath, str] = {}
    for split in SPLITS:
        for n, (label, rel, _) in enumerate(read_split(root, split), start=1):
            if rel in seen:
                raise DatasetError(
                    f"{root / f'{split}.json'} entry {n}: image {rel} is already listed in {seen[rel]}.json; "
                    "the official split files must not overlap"
                )
            seen[rel] = split
            image = inside(root, rel, f"{root / f'{split}.json'} entry {n}")
            if not image.is_file():
                collector.skip(image, f"listed in {split}.json but the image file is missing")
                continue
            collector.add(image, label, "mikels8", split=split)
    return collector.result("official", "EmoSet")


def _attribute_row(data: Any, where: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise DatasetError(f"{where}: expected a JSON object of attributes ({', '.join(ATTRIBUTES)})")
    row: dict[str, Any] = {}
    for key in SCALAR_ATTRIBUTES:
        value = data.get(key)
        try:
            row[key] = math.nan if value is None else float(value)
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: {key} must be a number in 0..1, got {value!r}") from None
    for key in NAME_ATTRIBUTES:
        value = data.get(key)
        row[key] = None if value is None else str(value)
    objects = data.get("object")
    row["object"] = [] if objects is None else [str(o) for o in (objects if isinstance(objects, list) else [objects])]
    return row


def read_attributes(root: str | Path, splits: tuple[str, ...] = SPLITS, on_error: OnError = "raise") -> pd.DataFrame:
    """EmoSet's emotion attributes, one row an image listed in ``splits``, indexed by the manifest's ``path``.

    Columns: ``brightness`` and ``colorfulness`` (float), ``scene``, ``facial_expression`` and
    ``human_action`` (str), each missing (``pandas.isna``) where the image has no such annotation, and
    ``object`` (list of str, empty when none).
    Reads one ``annotation/<emotion>/<id>.json`` per image (the path the split file gives). A missing or
    unreadable annotation raises a one-line ``DatasetError`` naming it, or with ``on_error="skip"`` leaves
    that image out.
    """
    root = Path(root)
    rows, index = [], []
    for split in splits:
        for label, rel, annotation in read_split(root, split):
            ann = inside(
                root,
                annotation or PurePosixPath("annotation", label, rel.with_suffix(".json").name),
                f"{root / f'{split}.json'} annotation of {rel}",
            )
            try:
                row = _attribute_row(json.loads(ann.read_text(encoding="utf-8-sig")), ann)
            except (OSError, json.JSONDecodeError, UnicodeDecodeError, DatasetError) as exc:
                if on_error == "skip":
                    continue
                if isinstance(exc, DatasetError):
                    raise
                reason = "file not found" if isinstance(exc, FileNotFoundError) else str(exc).splitlines()[0]
                raise DatasetError(f"{ann}: annotation of {rel} unreadable ({reason})") from None
            rows.append(row)
            index.append(rel.as_posix())
    return pd.DataFrame(rows, index=pd.Index(index, name="path"), columns=list(ATTRIBUTES))
