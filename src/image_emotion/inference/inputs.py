"""Which image files the user named, and decoding them: a bad file is a failure with its reason, not a stop."""

from __future__ import annotations

import glob
from pathlib import Path

from PIL import Image

from image_emotion.data.images import is_image_name, load_image
from image_emotion.errors import ImageDecodeError

Failures = dict[str, str]  # the argument or file -> why it gave no answer


def expand_inputs(arguments: list[str]) -> tuple[list[Path], Failures]:
    """The image files the arguments name (a file, a folder searched recursively, or a glob pattern; in order,
    without repeats) and the arguments that name none."""
    files: list[Path] = []
    failures: Failures = {}
    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            found = image_files(path)
        elif path.is_file():
            found = [path]
        elif glob.has_magic(arg):
            found = sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).is_file())
        else:
            failures[arg] = "no such file or folder"
            continue
        if not found:
            failures[arg] = "no image files there (jpg, png, bmp, gif, webp, tif)"
        files += [f for f in found if f not in files]
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


def image_files(directory: Path) -> list[Path]:
    """The image files under ``directory`` (recursively, sorted); none is an empty list."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and is_image_name(p))
