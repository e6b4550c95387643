"""A malformed CSV file of a dataset is refused in one line naming the file and its line, never a traceback."""

from __future__ import annotations

import pytest

from image_emotion.data.csv_rows import dict_rows, rows
from image_emotion.data.datasets import abstract
from image_emotion.data.synthetic import read_objects
from image_emotion.errors import DatasetError


def test_a_field_over_the_csv_limit_names_its_line(tmp_path):
    path = tmp_path / "annotations.csv"
    path.write_text("path,objects\na.png,[]\nb.png," + "x" * 200_000 + "\n")
    with pytest.raises(DatasetError, match=r"annotations\.csv line 3: not valid CSV \(field larger than field limit"):
        read_objects(tmp_path)


def test_bytes_that_are_not_utf8_name_the_file(tmp_path):
    latin = tmp_path / "l.csv"
    latin.write_bytes(b"path,label\n\xe9t\xe9.png,awe\n")
    with pytest.raises(DatasetError, match=r"l\.csv line \d: not valid CSV \('utf-8' codec"):  # decoded in blocks
        rows(latin)


def test_the_abstract_ground_truth_with_a_huge_field_is_one_line(tmp_path):
    path = tmp_path / abstract.CSV_NAME
    path.write_text("'Filename', 'Amusement'\n'a.jpg', " + "1" * 200_000 + "\n")
    with pytest.raises(DatasetError, match=rf"{abstract.CSV_NAME} line 2: not valid CSV"):
        abstract.read_votes(path)


def test_good_rows_come_with_their_file_lines(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("path,label\n\na.png,awe\nb.png,fear\n")
    assert [(n, r["path"]) for n, r in dict_rows(path)] == [(3, "a.png"), (4, "b.png")]
