"""CSV files of datasets read row by row, with a malformed file (an unterminated quote, a field over the csv
module's 128 KiB limit, bytes that are not the encoding) refused in one line naming the file and its line."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from image_emotion.errors import DatasetError


def _refused(path: Path, line: int, exc: Exception) -> DatasetError:
    return DatasetError(f"{path} line {line}: not valid CSV ({exc}); fix or remove that line")


def dict_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of each record of the CSV file ``path`` (its header names the keys; UTF-8)."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        last = 0  # the line of the last good record: the bad one starts after it
        try:
            for row in reader:
                last = reader.line_num
                yield last, row
        except (csv.Error, UnicodeDecodeError) as exc:
            raise _refused(path, last + 1, exc) from None


def rows(path: Path, **options) -> list[list[str]]:
    """Every record of ``path`` as a list of fields (``options``: ``csv.reader``'s; UTF-8 with or without BOM)."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, **options)
        out: list[list[str]] = []
        last = 0  # the line of the last good record: the bad one starts after it
        try:
            for row in reader:
                out.append(row)
                last = reader.line_num
        except (csv.Error, UnicodeDecodeError) as exc:
            raise _refused(path, last + 1, exc) from None
        return out
