"""Stage ``prepare``: a dataset's published layout -> validated manifest with seeded splits and folds.

Outputs: ``manifest.csv`` (see ``data/manifest.py``), ``dataset.json`` (name, image root, label set, split
scheme) and ``skipped.csv`` (every file left out and why), which replace the previous three together in one
atomic step (``files.atomic_dir``), then the summary metrics JSON. Split schemes: ``random`` (stratified
``prepare.split`` fractions, FI-style 80/5/15), ``folds`` (small datasets: split ``cv``), ``official``
(EmotionROI's files; a seeded stratified validation part is carved out of the official training list, in the
proportion val : train of ``prepare.split``).
Every row also gets a stratified fold 0..k-1, so any dataset can serve 5-fold transfer.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from image_emotion.config import Config, PrepareConfig
from image_emotion.data.datasets import LoaderOptions, LoadResult, load_dataset
from image_emotion.data.manifest import write_manifest
from image_emotion.data.splits import stratified_folds, stratified_split
from image_emotion.files import atomic_dir, write_json_atomic, write_text_atomic
from image_emotion.stages.paths import PreparePaths


def assign_splits(result: LoadResult, config: PrepareConfig) -> None:
    """Fill ``split`` and ``fold`` in place according to the dataset's split scheme."""
    df = result.manifest
    labels = df["label"].tolist()
    df["fold"] = stratified_folds(labels, config.folds, config.seed)
    if result.split_scheme == "random":
        df["split"] = stratified_split(labels, config.split.to_dict(), config.seed)
    elif result.split_scheme == "folds":
        df["split"] = "cv"
    elif not (df["split"] == "val").any():  # "official" with train/test only (EmotionROI): validation is carved
        train = df.index[df["split"] == "train"]  # out of train, stratified; an official val (EmoSet) is kept
        share = config.split.val / (config.split.train + config.split.val)
        carved = stratified_split(df.loc[train, "label"].tolist(), {"train": 1 - share, "val": share}, config.seed)
        df.loc[train, "split"] = carved


def summarise(result: LoadResult, name: str) -> dict[str, Any]:
    """Counts per split and per class, and how many files were skipped: the stage's DVC metrics."""
    df = result.manifest
    return {
        "dataset": name,
        "label_set": str(df["label_set"].iloc[0]),
        "split_scheme": result.split_scheme,
        "num_images": len(df),
        "num_skipped": len(result.skipped),
        "num_bad": sum(s.bad for s in result.skipped),
        "num_with_boxes": int((df["boxes"].map(len) > 0).sum()),
        "per_split": {k: int(v) for k, v in df["split"].value_counts().sort_index().items()},
        "per_class": {k: int(v) for k, v in df["label"].value_counts().sort_index().items()},
    }


def run(config: Config, paths: PreparePaths) -> dict[str, Any]:
    """Load, validate, split and write; nothing is written unless the whole dataset loaded."""
    name, root = config.data.dataset, Path(config.data.root)
    result = load_dataset(name, root, LoaderOptions.from_config(config))
    assign_splits(result, config.prepare)
    summary = summarise(result, name)

    skipped = io.StringIO()
    writer = csv.writer(skipped, lineterminator="\n")
    writer.writerow(["path", "reason", "bad"])
    writer.writerows([s.path, s.reason, int(s.bad)] for s in result.skipped)

    # a relative root is stored relative to the manifest's directory, so the pair can move together
    # (a kfp artifact, a DVC checkout elsewhere); an absolute root stays absolute
    stored_root = root if root.is_absolute() else Path(os.path.relpath(root.resolve(), paths.out_dir.resolve()))
    with atomic_dir(paths.out_dir) as out:  # the three files replace the previous ones together, or not at all
        write_manifest(result.manifest, out / "manifest.csv")
        write_text_atomic(out / "skipped.csv", skipped.getvalue())
        write_json_atomic(
            out / "dataset.json",
            {
                "dataset": name,
                "root": stored_root.as_posix(),
                "label_set": summary["label_set"],
                "split_scheme": result.split_scheme,
                "max_pixels": config.images.max_pixels,  # every later decode of these images keeps this limit
            },
        )
    write_json_atomic(paths.metrics, summary)
    return summary
