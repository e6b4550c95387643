"""What every dataset loader shares: options, the skip report and the on-error policy.

A loader walks a published on-disk layout and hands each image to ``Collector.add``; bad files (an
image that does not decode, an unknown label) are gathered, never raised mid-walk. At the end
``Collector.result`` either returns the manifest with a skip report (``on_error="skip"``) or raises one
``DatasetError`` that names the first bad file, the count, and the fix (``on_error="raise"``).
Files that are not images at all (``.DS_Store``, ``.rtf``) are *ignored*, listed but never an error.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from image_emotion.config import Config, DataConfig
from image_emotion.data.images import DEFAULT_MAX_PIXELS, is_image_name, load_image
from image_emotion.data.manifest import make_manifest
from image_emotion.data.safe_paths import inside
from image_emotion.errors import DatasetError, ImageDecodeError

OnError = Literal["raise", "skip"]
SplitScheme = Literal["random", "folds", "official"]

LABEL_ALIASES = {"sad": "sadness", "content": "contentment", "happiness": "joy", "happy": "joy"}


@dataclass(frozen=True)
class LoaderOptions:
    """How strict a loader is: params ``data`` (on_error, check_images, per-dataset options such as
    ``data.emotionroi``) and ``images.max_pixels``."""

    data: DataConfig = field(default_factory=DataConfig)
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_config(cls, config: Config) -> LoaderOptions:
        return cls(config.data, config.images.max_pixels)

    @property
    def on_error(self) -> OnError:
        return self.data.on_error

    @property
    def check_images(self) -> bool:
        return self.data.check_images


@dataclass
class Skipped:
    """One file left out of the manifest, and why. ``bad`` files count against ``on_error=raise``."""

    path: str
    reason: str
    bad: bool = True


@dataclass
class LoadResult:
    """A loader's output: the manifest (splits not yet assigned), what was skipped, the split scheme."""

    manifest: pd.DataFrame
    skipped: list[Skipped]
    split_scheme: SplitScheme
    root: Path


def normalise_label(name: str) -> str:
    """Lower-case a folder/file label and map the published spellings (``sad``, ``Content``) to ours."""
    key = name.strip().strip("'\"").lower()
    return LABEL_ALIASES.get(key, key)


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise naming it and what was expected there."""
    if not path.is_dir():
        raise DatasetError(f"{path}: directory not found; expected {what} (check data.root in params.yaml)")
    return path


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise naming it and what was expected there."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found; expected {what} (check data.root in params.yaml)")
    return path


def first_existing_dir(root: Path, *candidates: str) -> Path:
    """The first of ``root/candidate`` that is a directory, else ``root`` itself (flat copies)."""
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    return root


class Collector:
    """Gathers manifest rows and skipped files for one dataset under ``root``."""

    def __init__(self, root: Path, options: LoaderOptions) -> None:
        self.root = root
        self.options = options
        self.rows: list[dict[str, Any]] = []
        self.skipped: list[Skipped] = []

    def rel(self, path: Path) -> str:
        """``path`` relative to the dataset root, POSIX style."""
        return path.relative_to(self.root).as_posix()

    def add(self, path: Path, label: str, label_set: str, **fields: Any) -> None:
        """Queue an image; it is decoded (when ``check_images``) in ``result``. ``path`` must stay inside the
        root (``safe_paths.inside``: also for files found by walking a folder, which may be symlinks)."""
        if path.is_relative_to(self.root):
            rel: str | Path = self.rel(path)
        else:  # an absolute path from a data file, or one beside the root: refused below
            rel = path if path.is_absolute() else Path(os.path.relpath(path, self.root))
        inside(self.root, rel, str(self.root))
        self.rows.append({"path": rel, "label": label, "label_set": label_set, **fields})

    def skip(self, path: Path | str, reason: str, bad: bool = True) -> None:
        """Leave ``path`` out with ``reason``; ``bad=False`` for files that are not images at all."""
        shown = self.rel(path) if isinstance(path, Path) and path.is_relative_to(self.root) else str(path)
        self.skipped.append(Skipped(shown, reason, bad))

    def add_or_ignore(self, path: Path, label: str, label_set: str, **fields: Any) -> None:
        """``add`` image-named files; ignore hidden and non-image files (``.DS_Store``, ``.rtf``)."""
        if path.name.startswith(".") or not is_image_name(path):
            self.skip(path, "not an image file (ignored)", bad=False)
        else:
            self.add(path, label, label_set, **fields)

    def _decode_errors(self) -> list[str | None]:
        """Decode every queued image in parallel; the error message per row, or None."""

        def check(row: dict[str, Any]) -> str | None:
            try:
                load_image(self.root / row["path"], self.options.max_pixels)
            except ImageDecodeError as exc:
                return exc.reason
            return None

        workers = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(check, self.rows))

    def result(self, split_scheme: SplitScheme, dataset: str) -> LoadResult:
        """Apply the on-error policy and return the manifest with its skip report."""
        rows = self.rows
        if self.options.check_images and rows:
            errors = self._decode_errors()
            for row, err in zip(rows, errors, strict=True):
                if err is not None:
                    self.skipped.append(Skipped(row["path"], err, True))
            rows = [r for r, e in zip(rows, errors, strict=True) if e is None]
        bad = [s for s in self.skipped if s.bad]
        if bad and self.options.on_error == "raise":
            more = f" (and {len(bad) - 1} more bad file(s))" if len(bad) > 1 else ""
            raise DatasetError(
                f"{self.root / bad[0].path}: {bad[0].reason}{more}; fix or remove it, "
                "or set data.on_error: skip to leave bad files out with a report"
            )
        if not rows:
            raise DatasetError(f"{self.root}: no usable {dataset} images found; check data.root and the layout")
        return LoadResult(make_manifest(rows), self.skipped, split_scheme, self.root)


def collect_label_dirs(collector: Collector, base: Path, label_set: str) -> None:
    """Walk ``base/<label>/<image>`` (FI, IAPSsubset): one sub-directory a label, any depth below it."""
    from image_emotion.data.emotions import get_label_set

    labels = get_label_set(label_set).labels
    subdirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise DatasetError(f"{base}: no label directories; expected {base}/<{'|'.join(labels)}>/<image>")
    absent = sorted(set(labels) - {normalise_label(p.name) for p in subdirs})
    if absent:
        raise DatasetError(
            f"{base}: label directory {absent[0]!r} missing"
            + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else "")
            + "; the copy is incomplete: restore it from the published archive"
        )
    for sub in subdirs:
        label = normalise_label(sub.name)
        files = sorted(p for p in sub.rglob("*") if p.is_file())
        if label not in labels:
            for f in files:
                collector.skip(f, f"unknown label directory {sub.name!r} (expected one of {', '.join(labels)})")
            continue
        for f in files:
            collector.add_or_ignore(f, label, label_set)


def load_label_dir_dataset(
    root: Path, options: LoaderOptions, subdir: str, split_scheme: SplitScheme, dataset: str
) -> LoadResult:
    """A folder-per-emotion dataset (``[subdir/]<emotion>/<image>``, Mikels-8) under ``root``."""
    base = first_existing_dir(require_dir(root, f"the {dataset} dataset"), subdir)
    collector = Collector(root, options)
    collect_label_dirs(collector, base, "mikels8")
    return collector.result(split_scheme, dataset)
