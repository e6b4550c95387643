import shutil

import numpy as np
import pytest
from layouts import EKMAN, LAYOUTS, MIKELS, make_abstract, make_artphoto, make_emotionroi, make_fi, make_twitter

from image_emotion.data.datasets import LoaderOptions, load_dataset
from image_emotion.data.datasets.emotionroi import heatmap_boxes
from image_emotion.data.manifest import validate_manifest
from image_emotion.errors import ConfigError, DatasetError

EXPECTED = {  # dataset -> (images, label set, split scheme)
    "fi": (24, "mikels8", "random"),
    "iaps": (40, "mikels8", "folds"),
    "artphoto": (40, "mikels8", "folds"),
    "abstract": (40, "mikels8", "folds"),
    "emotionroi": (24, "ekman6", "official"),
    "emotion6": (24, "emotion6", "random"),
    "twitter": (10, "binary", "random"),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_layout_loads_into_one_manifest_format(tmp_path, name):
    root = LAYOUTS[name](tmp_path / name)
    result = load_dataset(name, root)
    n, label_set, scheme = EXPECTED[name]
    df = validate_manifest(result.manifest, name)
    assert len(df) == n
    assert set(df["label_set"]) == {label_set}
    assert result.split_scheme == scheme
    assert all((root / p).is_file() for p in df["path"])
    assert not [s for s in result.skipped if s.bad]


def test_fi_labels_follow_directories(tmp_path):
    df = load_dataset("fi", make_fi(tmp_path)).manifest
    assert sorted(set(df["label"])) == sorted(MIKELS)
    assert all(p.split("/")[1] == label for p, label in zip(df["path"], df["label"], strict=True))


def test_artphoto_prefix_and_stray_files(tmp_path):
    result = load_dataset("artphoto", make_artphoto(tmp_path))
    assert "sadness" in set(result.manifest["label"])
    ignored = sorted(s.path for s in result.skipped if not s.bad)
    assert ignored == ["testImages_artphoto/.DS_Store", "testImages_artphoto/readme.rtf"]


def test_abstract_votes_become_distributions_and_ties_are_dropped(tmp_path):
    result = load_dataset("abstract", make_abstract(tmp_path))
    df = result.manifest
    dropped = {s.path for s in result.skipped}
    assert dropped == {"testImages_abstract/abstract_tie.jpg", "testImages_abstract/abstract_none.jpg"}
    first = df.iloc[0]  # CSV row: Amusement 5 votes, Anger 2 votes
    assert first["label"] == "amusement"
    assert first["distribution"][0] == pytest.approx(5 / 7)  # amusement is class 0 of mikels8
    assert first["distribution"][4] == pytest.approx(2 / 7)  # anger is class 4 of mikels8
    assert sum(first["distribution"]) == pytest.approx(1.0)


def test_emotionroi_heatmaps_become_boxes_and_official_split(tmp_path):
    df = load_dataset("emotionroi", make_emotionroi(tmp_path)).manifest
    assert sorted(set(df["label"])) == sorted(EKMAN)
    row = df[df["path"] == "images/anger/2.jpg"].iloc[0]
    (box,) = row["boxes"]
    np.testing.assert_allclose(box, [21, 10, 45, 30], atol=2)  # JPEG blurs the blob edge by a pixel
    assert df.groupby("split").size().to_dict() == {"test": 6, "train": 18}


def test_heatmap_boxes_on_two_blobs():
    heat = np.zeros((50, 50))
    heat[5:15, 5:25] = 1.0
    heat[30:45, 30:40] = 0.8
    heat[0, 49] = 0.9  # a one-pixel speck below min_area
    assert heatmap_boxes(heat, threshold=0.5, min_area=0.01) == [[5, 5, 25, 15], [30, 30, 40, 45]]
    assert heatmap_boxes(np.zeros((4, 4))) == []


def test_twitter_agreement_levels(tmp_path):
    root = make_twitter(tmp_path)
    sizes = {
        a: len(load_dataset("twitter", root, LoaderOptions(extra={"agreement": a})).manifest)
        for a in ("five", "four", "three")
    }
    assert sizes == {"five": 10, "four": 15, "three": 20}
    with pytest.raises(ConfigError, match="agreement"):
        load_dataset("twitter", root, LoaderOptions(extra={"agreement": "two"}))


def _break_fi(root):
    good = next((root / "emotion_dataset" / "awe").glob("*.jpg"))
    good.write_bytes(good.read_bytes()[:200])  # truncated JPEG
    (root / "emotion_dataset" / "fear" / "fear_99.jpg").write_text("not a jpeg")
    (root / "emotion_dataset" / "happiness").mkdir()
    (root / "emotion_dataset" / "happiness" / "x.jpg").write_bytes(
        (root / "emotion_dataset" / "fear" / "fear_0.jpg").read_bytes()
    )
    return good


def test_bad_files_raise_one_error_naming_the_first_and_the_count(tmp_path):
    root = make_fi(tmp_path)
    _break_fi(root)
    with pytest.raises(DatasetError) as err:
        load_dataset("fi", root)
    msg = str(err.value)
    assert "\n" not in msg and "and 2 more bad file(s)" in msg and "data.on_error: skip" in msg
    assert str(root) in msg


def test_bad_files_are_skipped_with_a_report_when_asked(tmp_path):
    root = make_fi(tmp_path)
    truncated = _break_fi(root)
    result = load_dataset("fi", root, LoaderOptions(on_error="skip"))
    reasons = {s.path: s.reason for s in result.skipped}
    assert len(result.manifest) == 23
    assert "truncated" in reasons[truncated.relative_to(root).as_posix()]
    assert "not an image" in reasons["emotion_dataset/fear/fear_99.jpg"]
    assert "unknown label directory 'happiness'" in reasons["emotion_dataset/happiness/x.jpg"]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_missing_root_is_a_clear_error(tmp_path, name):
    with pytest.raises(DatasetError, match="not found") as err:
        load_dataset(name, tmp_path / "nowhere")
    assert "\n" not in str(err.value)


def test_missing_heatmap_dir_and_split_file(tmp_path):
    root = make_emotionroi(tmp_path)
    (root / "training_testing_split" / "testing.txt").unlink()
    with pytest.raises(DatasetError, match=r"testing\.txt: file not found"):
        load_dataset("emotionroi", root)
    shutil.rmtree(root / "ground_truth")
    with pytest.raises(DatasetError, match="ground_truth: directory not found"):
        load_dataset("emotionroi", root)


def test_unknown_dataset_and_bad_policy():
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("imagenet", ".")
    with pytest.raises(ConfigError, match="on_error"):
        LoaderOptions(on_error="ignore")
