"""The manifest format round-trips through CSV and refuses bad rows with one line naming the file, row and image;
stratified splits and folds are seeded and keep every class's proportions."""

import re
from collections import Counter

import pandas as pd
import pytest

from image_emotion.data.manifest import make_manifest, read_manifest, write_manifest
from image_emotion.data.splits import stratified_folds, stratified_split
from image_emotion.errors import ConfigError, DatasetError


def _rows():
    return [
        {"path": "a.jpg", "label": "awe", "label_set": "mikels8", "distribution": [0.125] * 8, "boxes": [[1, 2, 3, 4]]},
        {"path": "b.jpg", "label": "fear", "label_set": "mikels8", "split": "test", "fold": 3},
    ]


def test_manifest_roundtrip(tmp_path):
    df = make_manifest(_rows())
    write_manifest(df, tmp_path / "m.csv")
    back = read_manifest(tmp_path / "m.csv")
    assert back["path"].tolist() == ["a.jpg", "b.jpg"]
    assert back["distribution"].iloc[0] == [0.125] * 8 and back["distribution"].iloc[1] is None
    assert back["boxes"].iloc[0] == [[1.0, 2.0, 3.0, 4.0]] and back["boxes"].iloc[1] == []
    assert back["fold"].tolist() == [-1, 3] and back["split"].tolist() == ["", "test"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"label": "joy"}, "label 'joy' is not in mikels8"),
        ({"distribution": [0.5] * 8}, "distribution sums to 4.0000, not 1"),
        ({"distribution": [1.0]}, "distribution needs 8 non-negative numbers"),
        ({"boxes": [[5, 5, 1, 1]]}, "box [5.0, 5.0, 1.0, 1.0] is not [x1, y1, x2, y2] with x1<x2"),
        ({"split": "holdout"}, "split 'holdout' is not one of"),
    ],
)
@pytest.mark.parametrize(("index", "row", "image"), [(0, 2, "a.jpg"), (1, 3, "b.jpg")])  # row 1 is the header
def test_manifest_validation_names_the_row(tmp_path, change, needle, index, row, image):
    rows = _rows()
    rows[index].update(change)
    with pytest.raises(DatasetError) as err:
        write_manifest(make_manifest(rows), tmp_path / "m.csv")
    assert str(err.value).startswith(f"{tmp_path / 'm.csv'} row {row} ({image}): {needle}"), str(err.value)
    assert not (tmp_path / "m.csv").exists()


def test_validation_names_the_row_of_a_manifest_read_back(tmp_path):
    write_manifest(make_manifest(_rows()), tmp_path / "m.csv")
    text = (tmp_path / "m.csv").read_text().replace("fear", "joy")  # row 3, b.jpg
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'm.csv'} row 3 (b.jpg): label 'joy'")):
        read_manifest(tmp_path / "m.csv")


def test_unknown_label_set_names_the_row(tmp_path):
    rows = _rows()
    rows[1]["label_set"] = "plutchik"
    with pytest.raises(DatasetError) as err:
        write_manifest(make_manifest(rows), tmp_path / "m.csv")
    assert str(err.value).startswith(f"{tmp_path / 'm.csv'} row 3 (b.jpg): ")


def test_unknown_label_set_is_refused_and_nothing_written(tmp_path):
    rows = _rows()
    rows[1]["label_set"] = "plutchik"
    with pytest.raises((DatasetError, ConfigError), match="unknown label set 'plutchik'"):
        write_manifest(make_manifest(rows), tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_manifest_duplicates_and_missing_columns(tmp_path):
    rows = _rows()
    rows[1]["path"] = "a.jpg"
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'm.csv'}: image 'a.jpg' listed twice")):
        write_manifest(make_manifest(rows), tmp_path / "m.csv")
    pd.DataFrame({"path": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    missing = "label, label_set, distribution, boxes, split, fold"
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'bad.csv'}: missing column(s) {missing};")):
        read_manifest(tmp_path / "bad.csv")
    with pytest.raises(
        DatasetError, match=re.escape(f"{tmp_path / 'absent.csv'}: manifest not found; run `image-emotion prepare`")
    ):
        read_manifest(tmp_path / "absent.csv")


def test_stratified_split_is_seeded_and_stratified():
    labels = ["a"] * 100 + ["b"] * 40
    s1 = stratified_split(labels, {"train": 0.8, "val": 0.05, "test": 0.15}, seed=1)
    assert s1 == stratified_split(labels, {"train": 0.8, "val": 0.05, "test": 0.15}, seed=1)
    assert s1 != stratified_split(labels, {"train": 0.8, "val": 0.05, "test": 0.15}, seed=2)
    a = Counter(s for s, label in zip(s1, labels, strict=True) if label == "a")
    b = Counter(s for s, label in zip(s1, labels, strict=True) if label == "b")
    assert a == {"train": 80, "val": 5, "test": 15}
    assert b == {"train": 32, "val": 2, "test": 6}
    with pytest.raises(ConfigError, match="sum to 1"):
        stratified_split(labels, {"train": 0.8, "test": 0.1}, seed=0)


def test_stratified_folds_are_balanced_per_class_and_overall():
    labels = ["a"] * 23 + ["b"] * 11 + ["c"] * 7
    folds = stratified_folds(labels, 5, seed=0)
    assert folds == stratified_folds(labels, 5, seed=0)
    assert folds != stratified_folds(labels, 5, seed=1)
    # every class spread as evenly as it goes: 23 = 5+5+5+4+4, 11 = 3+2+2+2+2, 7 = 2+2+1+1+1; and the remainders
    # land on different folds, so the folds hold 41 = 9+8+8+8+8
    for c, sizes in (("a", [5, 5, 5, 4, 4]), ("b", [3, 2, 2, 2, 2]), ("c", [2, 2, 1, 1, 1])):
        counts = Counter(f for f, label in zip(folds, labels, strict=True) if label == c)
        assert set(counts) == set(range(5)) and sorted(counts.values(), reverse=True) == sizes
    assert sorted(Counter(folds).values(), reverse=True) == [9, 8, 8, 8, 8]
    with pytest.raises(ConfigError):
        stratified_folds(labels, 1, seed=0)
