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
        ({"label": "joy"}, "not in mikels8"),
        ({"distribution": [0.5] * 8}, "sums to"),
        ({"distribution": [1.0]}, "needs 8"),
        ({"boxes": [[5, 5, 1, 1]]}, "x1<x2"),
        ({"split": "holdout"}, "split 'holdout'"),
        ({"label_set": "plutchik"}, "unknown label set"),
    ],
)
def test_manifest_validation_names_the_row(tmp_path, change, needle):
    rows = _rows()
    rows[0].update(change)
    with pytest.raises((DatasetError, ConfigError), match=needle):
        write_manifest(make_manifest(rows), tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_manifest_duplicates_and_missing_columns(tmp_path):
    rows = _rows()
    rows[1]["path"] = "a.jpg"
    with pytest.raises(DatasetError, match="listed twice"):
        write_manifest(make_manifest(rows), tmp_path / "m.csv")
    pd.DataFrame({"path": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DatasetError, match="missing column"):
        read_manifest(tmp_path / "bad.csv")
    with pytest.raises(DatasetError, match="image-emotion prepare"):
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
    for c in "abc":
        counts = Counter(f for f, label in zip(folds, labels, strict=True) if label == c)
        assert set(counts) <= set(range(5)) and max(counts.values()) - min(counts.values()) <= 1
    overall = Counter(folds)
    assert max(overall.values()) - min(overall.values()) <= 1
    with pytest.raises(ConfigError):
        stratified_folds(labels, 1, seed=0)
