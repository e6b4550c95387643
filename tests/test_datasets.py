"""Dataset loaders: each published layout becomes one manifest with the right labels, distributions, boxes and
split scheme, and bad files, bad lines and missing directories fail with one line naming the file (and line)."""

import json
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from layouts import (
    EKMAN,
    LAYOUTS,
    MIKELS,
    emoset_annotation,
    emoset_split,
    make_abstract,
    make_artphoto,
    make_emoset,
    make_emotion6,
    make_emotionroi,
    make_fi,
    make_twitter,
)

from image_emotion.config import DataConfig, SyntheticConfig
from image_emotion.data.datasets import LoaderOptions, load_dataset
from image_emotion.data.datasets.emoset import ATTRIBUTES, read_attributes
from image_emotion.data.datasets.emotionroi import heatmap_boxes
from image_emotion.data.manifest import validate_manifest
from image_emotion.data.synthetic import generate
from image_emotion.errors import ConfigError, DatasetError

EXPECTED = {  # dataset -> (images, label set, split scheme)
    "fi": (24, "mikels8", "random"),
    "iaps": (40, "mikels8", "folds"),
    "artphoto": (40, "mikels8", "folds"),
    "abstract": (40, "mikels8", "folds"),
    "emotionroi": (24, "ekman6", "official"),
    "emotion6": (24, "emotion6", "random"),
    "twitter": (10, "binary", "random"),
    "emoset": (32, "mikels8", "official"),
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
    labels = dict(zip(result.manifest["path"], result.manifest["label"], strict=True))
    assert {p: lab for p, lab in labels.items() if lab == "sadness"} == {  # the "sad_" prefix is sadness
        f"testImages_artphoto/sad_{i}.jpg": "sadness" for i in range(1, 6)
    }
    assert labels["testImages_artphoto/amusement_1.jpg"] == "amusement"
    ignored = sorted(s.path for s in result.skipped if not s.bad)
    assert ignored == ["testImages_artphoto/.DS_Store", "testImages_artphoto/readme.rtf"]


def test_abstract_votes_become_distributions_and_ties_are_dropped(tmp_path):
    result = load_dataset("abstract", make_abstract(tmp_path))
    df = result.manifest
    dropped = {s.path for s in result.skipped}
    assert dropped == {"testImages_abstract/abstract_tie.jpg", "testImages_abstract/abstract_none.jpg"}
    first = df.iloc[0]  # CSV row: Amusement 5 votes, Anger 2 votes
    assert first["label"] == "amusement"
    # mikels8 order: amusement 0, awe 1, contentment 2, excitement 3, anger 4, ...
    assert first["distribution"] == pytest.approx([5 / 7, 0, 0, 0, 2 / 7, 0, 0, 0])
    last = df[df["path"] == "testImages_abstract/abstract_0040.jpg"].iloc[0]  # Sad 5 votes, Amusement 2 votes
    assert last["label"] == "sadness"
    assert last["distribution"] == pytest.approx([2 / 7, 0, 0, 0, 0, 0, 0, 5 / 7])


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
        a: len(load_dataset("twitter", root, LoaderOptions(DataConfig(twitter={"agreement": a}))).manifest)
        for a in ("five", "four", "three")
    }
    assert sizes == {"five": 10, "four": 15, "three": 20}
    df = load_dataset("twitter", root).manifest  # "<n>.jpg <(n - 1) % 2>": 1 is positive
    assert dict(zip(df["path"], df["label"], strict=True)) == {
        f"images/{i + 1}.jpg": ("positive" if i % 2 else "negative") for i in range(10)
    }
    with pytest.raises(ConfigError, match=r"twitter\.agreement"):
        DataConfig(twitter={"agreement": "two"})


def _emoset_entries(root):
    """``{image path: (split, emotion)}`` read straight from the fixture's three split files."""
    return {
        entry[2]: (split, entry[0])
        for split in ("train", "val", "test")
        for entry in json.loads((root / f"{split}.json").read_text())
    }


def test_emoset_official_splits_and_labels_are_kept(tmp_path):
    root = make_emoset(tmp_path)
    result = load_dataset("emoset", root)
    df = result.manifest
    # 4 images a class: images 0 and 1 in train.json, 2 in val.json, 3 in test.json
    assert df.groupby("split").size().to_dict() == {"train": 16, "val": 8, "test": 8}
    assert df.groupby(["split", "label"]).size().to_dict() == {
        (split, emo): n for emo in MIKELS for split, n in (("train", 2), ("val", 1), ("test", 1))
    }
    assert {p: (sp, lab) for p, sp, lab in zip(df["path"], df["split"], df["label"], strict=True)} == _emoset_entries(
        root
    )
    row = df[df["path"] == "image/anger/anger_1003.jpg"].iloc[0]
    assert (row["label"], row["split"], row["label_set"]) == ("anger", "test", "mikels8")
    assert result.split_scheme == "official" and result.skipped == []


def test_emoset_manifest_needs_no_annotation_json(tmp_path):
    root = make_emoset(tmp_path)
    shutil.rmtree(root / "annotation")
    (root / "info.json").unlink()
    df = load_dataset("emoset", root).manifest
    assert len(df) == 32 and df["split"].value_counts().to_dict() == {"train": 16, "val": 8, "test": 8}


def _break_emoset(root):
    """Delete an image train.json lists and truncate one val.json lists; both stay in their split files."""
    missing, truncated = root / "image/fear/fear_6000.jpg", root / "image/awe/awe_2002.jpg"
    assert emoset_split(0) == "train" and emoset_split(2) == "val"
    missing.unlink()
    truncated.write_bytes(truncated.read_bytes()[:200])
    return missing, truncated


def test_emoset_missing_and_unreadable_images_are_skipped_with_a_report(tmp_path):
    root = make_emoset(tmp_path)
    _break_emoset(root)
    result = load_dataset("emoset", root, LoaderOptions(DataConfig(on_error="skip")))
    reasons = {s.path: s.reason for s in result.skipped if s.bad}
    assert reasons.keys() == {"image/fear/fear_6000.jpg", "image/awe/awe_2002.jpg"}
    assert reasons["image/fear/fear_6000.jpg"] == "listed in train.json but the image file is missing"
    assert "truncated" in reasons["image/awe/awe_2002.jpg"]
    df = result.manifest
    assert len(df) == 30 and df["split"].value_counts().to_dict() == {"train": 15, "val": 7, "test": 8}
    assert not set(df["path"]) & reasons.keys()
    # without decoding, the truncated image passes, but a missing one is still caught
    unchecked = load_dataset("emoset", root, LoaderOptions(DataConfig(on_error="skip", check_images=False)))
    assert [s.path for s in unchecked.skipped] == ["image/fear/fear_6000.jpg"] and len(unchecked.manifest) == 31


def test_emoset_missing_image_raises_one_line_naming_it(tmp_path):
    root = make_emoset(tmp_path)
    missing, _ = _break_emoset(root)
    with pytest.raises(DatasetError) as err:
        load_dataset("emoset", root)
    msg = str(err.value)
    assert "\n" not in msg and "(and 1 more bad file(s))" in msg and "data.on_error: skip" in msg
    assert msg.startswith(f"{missing}: listed in train.json but the image file is missing")


def _rewrite_entry(path, n, **changes):
    """Change fields of entry ``n`` (1-based) of a split file: emotion, image."""
    entries = json.loads(path.read_text())
    entry = entries[n - 1]
    if "emotion" in changes:
        entry[0] = changes["emotion"]
    if "image" in changes:
        entry[2] = changes["image"]
    path.write_text(json.dumps(entries, indent=4))
    return entry


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_emoset_unknown_emotion_names_the_split_file_and_entry(tmp_path, on_error):
    root = make_emoset(tmp_path)
    entry = _rewrite_entry(root / "val.json", 3, emotion="happiness")
    with pytest.raises(DatasetError) as err:
        load_dataset("emoset", root, LoaderOptions(DataConfig(on_error=on_error)))
    msg = str(err.value)
    assert msg.startswith(f"{root / 'val.json'} entry 3 ({entry[2]}): unknown emotion 'happiness' (expected one of ")
    assert "\n" not in msg and "sadness" in msg


def test_emoset_bad_split_files(tmp_path):
    root = make_emoset(tmp_path)
    train = root / "train.json"
    first = json.loads(train.read_text())[0][2]
    _rewrite_entry(root / "test.json", 2, image=first)  # test.json lists a training image
    with pytest.raises(
        DatasetError, match=re.escape(f"{root / 'test.json'} entry 2: image {first} is already listed in train.json; ")
    ):
        load_dataset("emoset", root)
    _rewrite_entry(root / "test.json", 2, image="../elsewhere/x.jpg")
    with pytest.raises(
        DatasetError, match=re.escape(f"{root / 'test.json'} entry 2: path '../elsewhere/x.jpg' is not")
    ):
        load_dataset("emoset", root)
    train.write_text('[["amusement", "amusement_0"]]')
    with pytest.raises(DatasetError, match=re.escape(f"{train} entry 1: expected [emotion, image id, image path")):
        load_dataset("emoset", root)
    train.write_text("[[")
    with pytest.raises(DatasetError, match=re.escape(f"{train}: not valid JSON")):
        load_dataset("emoset", root)
    train.unlink()
    with pytest.raises(DatasetError, match=re.escape(f"{train}: file not found")):
        load_dataset("emoset", root)


def test_emoset_backslash_paths_are_read_as_posix(tmp_path):
    root = make_emoset(tmp_path)
    _rewrite_entry(root / "val.json", 1, image="image\\amusement\\amusement_2.jpg")
    df = load_dataset("emoset", root).manifest
    assert df.loc[df["path"] == "image/amusement/amusement_2.jpg", "split"].tolist() == ["val"]


def _same(a, b):
    """Equal, or both missing (the table's NA for an attribute the image has no annotation of)."""
    if isinstance(a, list) or isinstance(b, list):
        return a == b
    return bool(pd.isna(a) and pd.isna(b)) or (not pd.isna(a) and not pd.isna(b) and a == b)


def test_emoset_read_attributes_returns_the_annotations(tmp_path):
    root = make_emoset(tmp_path)
    table = read_attributes(root)
    assert table.index.name == "path" and list(table.columns) == list(ATTRIBUTES)
    assert sorted(table.index) == sorted(load_dataset("emoset", root).manifest["path"])
    hand = {  # three images, by hand from emoset_annotation
        "image/anger/anger_1003.jpg": (0.4, 0.3, "beach", "sad", "crying", ["Skull", "Person"]),
        "image/amusement/amusement_1.jpg": (0.1, 0.8, None, None, None, []),
        "image/awe/awe_2002.jpg": (math.nan, 0.4, "beach", "angry", "crying", ["Person"]),
    }
    for path, (bright, colour, scene, face, action, objects) in hand.items():
        row = table.loc[path]
        assert _same(row["brightness"], bright) and row["colorfulness"] == pytest.approx(colour), path
        got = (row["scene"], row["facial_expression"], row["human_action"], row["object"])
        assert all(_same(g, w) for g, w in zip(got, (scene, face, action, objects), strict=True)), (path, got)
    for c, emo in enumerate(MIKELS):  # and every image as written
        for i in range(4):
            written, row = emoset_annotation(c, i), table.loc[f"image/{emo}/{emo}_{c * 1000 + i}.jpg"]
            for key in ATTRIBUTES:
                want = written.get(key, [] if key == "object" else None)
                assert _same(row[key], want), (emo, i, key)
    only_test = read_attributes(root, splits=("test",))
    assert len(only_test) == 8 and all(p.endswith("3.jpg") for p in only_test.index)


def test_emoset_read_attributes_missing_annotation(tmp_path):
    root = make_emoset(tmp_path)
    gone = root / "annotation/sadness/sadness_7000.json"
    gone.unlink()
    with pytest.raises(DatasetError) as err:
        read_attributes(root)
    assert str(err.value) == f"{gone}: annotation of image/sadness/sadness_7000.jpg unreadable (file not found)"
    table = read_attributes(root, on_error="skip")
    assert len(table) == 31 and "image/sadness/sadness_7000.jpg" not in table.index


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
    truncated = _break_fi(root)
    with pytest.raises(DatasetError) as err:
        load_dataset("fi", root)
    msg = str(err.value)
    assert "\n" not in msg and "(and 2 more bad file(s))" in msg and "data.on_error: skip" in msg
    bad = {  # the three bad files and what is wrong with each
        root / truncated.relative_to(root): "corrupt or truncated image",
        root / "emotion_dataset/fear/fear_99.jpg": "not an image",
        root / "emotion_dataset/happiness/x.jpg": "unknown label directory 'happiness'",
    }
    named = [path for path, reason in bad.items() if msg.startswith(f"{path}: {reason}")]
    assert len(named) == 1, msg  # one of them, in full, with its own reason


def test_bad_files_are_skipped_with_a_report_when_asked(tmp_path):
    root = make_fi(tmp_path)
    truncated = _break_fi(root)
    result = load_dataset("fi", root, LoaderOptions(DataConfig(on_error="skip")))
    reasons = {s.path: s.reason for s in result.skipped}
    assert len(result.manifest) == 23
    assert "truncated" in reasons[truncated.relative_to(root).as_posix()]
    assert "not an image" in reasons["emotion_dataset/fear/fear_99.jpg"]
    assert "unknown label directory 'happiness'" in reasons["emotion_dataset/happiness/x.jpg"]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_missing_root_is_a_clear_error(tmp_path, name):
    with pytest.raises(DatasetError) as err:
        load_dataset(name, tmp_path / "nowhere")
    # the root itself, or the first directory expected inside it (EmotionROI: nowhere/images)
    assert re.match(rf"{re.escape(str(tmp_path / 'nowhere'))}(/images)?: directory not found; ", str(err.value))
    assert "\n" not in str(err.value)


def test_missing_heatmap_dir_and_split_file(tmp_path):
    root = make_emotionroi(tmp_path)
    (root / "training_testing_split" / "testing.txt").unlink()
    with pytest.raises(DatasetError, match=re.escape(f"{root / 'training_testing_split' / 'testing.txt'}: file not")):
        load_dataset("emotionroi", root)
    shutil.rmtree(root / "ground_truth")
    with pytest.raises(DatasetError, match=re.escape(f"{root / 'ground_truth'}: directory not found")):
        load_dataset("emotionroi", root)


def test_unknown_dataset_and_bad_policy():
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", ".")
    with pytest.raises(ConfigError, match="on_error"):
        DataConfig(on_error="ignore")


def _replace_line(path, number, text):
    """Put ``text`` on line ``number`` (1-based) of ``path``, after inserting a blank line 2 so the count must
    include blank lines as an editor does."""
    lines = path.read_text().splitlines()
    lines.insert(1, "")
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


BAD_LINES = {  # dataset -> (layout, file under the root, a bad line, what the error says about it)
    "twitter": (make_twitter, "five_agree.txt", "4.jpg 2", "expected '<image name> <0|1>', got '4.jpg 2'"),
    "emotion6": (
        make_emotion6,
        "ground_truth.txt",
        "anger/2.jpg\t5.1\t4.2\tmany\t0.05\t0.05\t0.05\t0.05\t0.05\t0.05",
        "probabilities must be numbers",
    ),
    "abstract": (
        make_abstract,
        "testImages_abstract/ABSTRACT_groundTruth.csv",
        "'abstract_0002.jpg',5,two,0,0,0,0,0,0",
        "vote counts must be numbers",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_LINES))
def test_a_bad_label_line_is_named_by_file_and_line_number(tmp_path, name):
    make, rel, text, reason = BAD_LINES[name]
    root = make(tmp_path / name)
    path = _replace_line(root / rel, 4, text)
    with pytest.raises(DatasetError) as err:
        load_dataset(name, root)
    assert str(err.value).startswith(f"{path} line 4: {reason}") and "\n" not in str(err.value)


def _synthetic_with_line_3(tmp_path, votes):
    root = generate(tmp_path / "synthetic", SyntheticConfig.one_set(num_images=16, image_size=64))
    ann = root / "annotations.csv"
    lines = ann.read_text().splitlines()
    lines[2] = re.sub(r'"\[[^]]*\]"', f'"{votes}"', lines[2], count=1)  # line 3: the second image's votes
    ann.write_text("\n".join(lines) + "\n")
    return root, ann


def test_synthetic_annotation_line_with_bad_json_is_named(tmp_path):
    root, ann = _synthetic_with_line_3(tmp_path, "[1, 2,")
    with pytest.raises(DatasetError) as err:
        load_dataset("synthetic", root)
    assert str(err.value).startswith(f"{ann} line 3: expected path, label, votes, boxes columns")


def test_synthetic_annotation_line_number_counts_blank_lines(tmp_path):
    root = generate(tmp_path / "synthetic", SyntheticConfig.one_set(num_images=16, image_size=64))
    ann = _replace_line(root / "annotations.csv", 4, "images/00001.png,awe,[1,[]")
    with pytest.raises(DatasetError) as err:
        load_dataset("synthetic", root)
    assert str(err.value).startswith(f"{ann} line 4: ")


UNNORMALISABLE_VOTES = {  # dataset -> (layout, file, line 3 replaced by votes that are numbers but not counts)
    "synthetic": None,
    "emotion6": (make_emotion6, "ground_truth.txt", "anger/2.jpg\t5.1\t4.2\t0.9\t-0.2\t0.05\t0.05\t0.1\t0.05\t0.05"),
    "abstract": (make_abstract, "testImages_abstract/ABSTRACT_groundTruth.csv", "'abstract_0002.jpg',5,-2,0,0,0,0,0,0"),
}


@pytest.mark.parametrize("name", sorted(UNNORMALISABLE_VOTES))
def test_votes_that_cannot_be_normalised_are_named_by_file_and_line(tmp_path, name):
    if name == "synthetic":
        root, path = _synthetic_with_line_3(tmp_path, "[0, 0, 0, 0, 0, 0, 0, 0]")  # no votes at all
    else:
        make, rel, text = UNNORMALISABLE_VOTES[name]
        root = make(tmp_path / name)
        lines = (root / rel).read_text().splitlines()
        lines[2] = text  # a negative vote
        path = root / rel
        path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as err:
        load_dataset(name, root)
    assert str(err.value).startswith(f"{path} line 3: ")
