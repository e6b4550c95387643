"""Which image files the user named, and decoding them: a bad file is a failure with its reason, not a stop."""

from __future__ import annotations

import fnmatch
import glob
import os
from pathlib import Path

from PIL import Image

from image_emotion.data.images import is_image_name, load_image
from image_emotion.errors import ImageDecodeError

Failures = dict[str, str]  # the argument or file -> why it gave no answer


def expand_inputs(arguments: list[str]) -> tuple[list[Path], Failures]:
    """The image files the arguments name (a file, a folder searched recursively, or a glob pattern; in order,
    without repeats) and the arguments that name none."""
    files: list[Path] = []
    seen: set[Path] = set()
    failures: Failures = {}
    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            found = image_files(path)
        elif path.is_file():
            found = [path]
        elif glob.has_magic(arg):
            found = glob_files(arg)
        else:
            failures[arg] = "no such file or folder"
            continue
        if not found:
            failures[arg] = "no image files there (jpg, png, bmp, gif, webp, tif)"
        for f in found:
            if f not in seen:
                seen.add(f)
                files.append(f)
    return files, failures


def decode(files: list[Path]) -> tuple[dict[Path, Image.Image], Failures]:
    """Each file decoded once (RGB), and the files that could not be, with the reason."""
    decoded: dict[Path, Image.Image] = {}
    failures: Failures = {}
    for path in files:
        try:
            decoded[path] = load_image(path)
        except ImageDecodeError as exc:
            failures[str(path)] = exc.reason
    return decoded, failures


def _names(directory: Path) -> list[str]:
    try:
        with os.scandir(directory) as entries:
            return [e.name for e in entries]
    except OSError:  # not a folder, gone, or unreadable: nothing matches below it
        return []


def _tree(directory: Path) -> list[Path]:
    """``directory``, its sub-folders and files, at any depth (hidden names left out); a symlinked folder is
    neither entered nor listed, so each real folder comes once and a symlink loop cannot recurse."""
    out = [directory]
    for top, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(top, d)))
        out += [Path(top, n) for n in sorted(dirs + names) if not n.startswith(".")]
    return out


def glob_files(pattern: str) -> list[Path]:
    """The files that ``pattern`` matches (sorted): ``*``, ``?`` and ``[...]`` within a name, ``**`` a folder and
    everything below it; names starting with ``.`` only where the pattern's part does. Like a folder argument's
    search, ``**`` enters no symlinked folder, so a symlink loop cannot make the expansion endless."""
    parts = Path(pattern).parts
    first = next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))
    matches = [Path(*parts[:first])]
    for part in parts[first:]:
        if part == "**":
            found = [p for m in matches for p in _tree(m)]
        elif glob.has_magic(part):
            found = [
                m / n
                for m in matches
                for n in sorted(_names(m))
                if fnmatch.fnmatch(n, part) and (part.startswith(".") or not n.startswith("."))
            ]
        else:
            found = [m / part for m in matches]
        matches = list(dict.fromkeys(found))
    return sorted(m for m in matches if m.is_file())


def image_files(directory: Path) -> list[Path]:
    """The image files under ``directory`` (recursively, sorted); none is an empty list."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and is_image_name(p))
