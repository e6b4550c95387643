"""The one rule for paths read from data (a manifest row, an annotation line, a cache index entry).

Such a path is relative, has no ``..`` component and, once its symlinks are resolved, stays inside the
root it is joined to (a symlink to another file inside the root is fine; one leading out is not).
Anything else is refused with a one-line error naming the path, where it came from and the fix,
before any file is opened or removed.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath, PurePosixPath

from image_emotion.errors import DatasetError, ImageEmotionError

FIX = (
    "paths in data files are relative to the dataset root and stay inside it (no absolute path, no '..', "
    "no symlink leading out); fix or remove that entry"
)


def _refuse(
    value: object, what: str, reason: str, place: str, fix: str, error: type[ImageEmotionError]
) -> ImageEmotionError:
    return error(f"{what}: path {str(value)!r} is not inside {place}: {reason}; {fix}")


def relative_path(
    value: str | PurePath,
    what: str,
    *,
    place: str = "the dataset root",
    fix: str = FIX,
    error: type[ImageEmotionError] = DatasetError,
) -> PurePosixPath:
    """``value`` as a relative POSIX path with no ``..`` component (the check that needs no root), else
    ``error`` naming ``value`` and ``what`` (where it came from, e.g. ``"manifest.csv row 12"``)."""
    text = value.as_posix() if isinstance(value, PurePath) else value
    if not isinstance(text, str):
        raise TypeError(f"a path must be a string, got {type(value).__name__}")
    rel = PurePosixPath(text)
    if "\x00" in text:
        raise _refuse(value, what, "it holds a NUL byte", place, fix, error)
    if rel.is_absolute():
        raise _refuse(value, what, "it is absolute", place, fix, error)
    if ".." in rel.parts:
        raise _refuse(value, what, "it has a '..' component", place, fix, error)
    if not rel.parts:
        raise _refuse(value, what, "it is empty", place, fix, error)
    return rel


def inside(
    root: Path,
    relative: str | PurePath,
    what: str,
    *,
    place: str = "the dataset root",
    fix: str = FIX,
    error: type[ImageEmotionError] = DatasetError,
) -> Path:
    """``root / relative`` once ``relative`` passes ``relative_path`` and, its symlinks resolved, stays inside
    ``root.resolve()``; else ``error`` (one line) naming the path, ``what`` it came from and the fix.
    The returned path keeps the names as given (a symlink inside the root is not replaced by its target)."""
    rel = relative_path(relative, what, place=place, fix=fix, error=error)
    base = Path(os.path.realpath(root))
    target = Path(os.path.realpath(base.joinpath(*rel.parts)))
    if target != base and not target.is_relative_to(base):
        raise _refuse(relative, what, f"it resolves to {target} (a symlink leads out of {base})", place, fix, error)
    return Path(root).joinpath(*rel.parts)
