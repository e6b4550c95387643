"""The prepare stage: every public layout becomes a validated, deterministic manifest with the split scheme its
protocol uses, and bad input fails with one line naming the file (earlier outputs left intact) or is skipped
with a report on request."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from layouts import LAYOUTS, MIKELS, make_fi
from test_images import _patch_png_size

from image_emotion.cli import main
from image_emotion.config import load_config
from image_emotion.data.manifest import read_manifest


def _prepare(repo_root, out, *overrides):
    args = [
        "prepare",
        "--params",
        str(repo_root / "params.yaml"),
        "--out-dir",
        str(out / "prepared"),
        "--metrics",
        str(out / "metrics.json"),
    ]
    for o in overrides:
        args += ["--set", o]
    return main(args)


def test_prepare_synthetic_default_via_the_console_script(tmp_path, repo_root):
    emb = tmp_path / "synthetic"
    subprocess.run(
        [
            "image-emotion",
            "make-synthetic",
            "--params",
            str(repo_root / "params.yaml"),
            "--out-dir",
            str(emb),
            "--set",
            "synthetic.sets={main: {num_images: 80, seed: 0}}",
            "--set",
            "synthetic.image_size=96",
        ],
        check=True,
        capture_output=True,
    )
    proc = subprocess.run(
        [
            "image-emotion",
            "prepare",
            "--params",
            str(repo_root / "params.yaml"),
            "--out-dir",
            str(tmp_path / "prepared"),
            "--metrics",
            str(tmp_path / "metrics.json"),
            "--set",
            f"data.root={emb / 'main'}",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    summary = json.loads(proc.stdout)
    assert summary["num_images"] == 80 and summary["num_with_boxes"] == 80
    df = read_manifest(tmp_path / "prepared" / "manifest.csv")
    assert set(df["split"]) == {"train", "val", "test"} and set(df["fold"]) == set(range(5))
    info = json.loads((tmp_path / "prepared" / "dataset.json").read_text())
    assert sorted(p.name for p in emb.iterdir()) == ["main"]  # one directory a synthetic set
    expected = {
        "dataset": "synthetic",
        "root": (emb / "main").as_posix(),
        "label_set": "mikels8",
        "split_scheme": "random",
        "max_pixels": 50_000_000,  # params.yaml's images.max_pixels, kept for every later decode
    }
    assert info == expected
    assert json.loads((tmp_path / "metrics.json").read_text()) == summary


PROTOCOLS = {  # dataset -> (images in its tiny layout, split scheme of its protocol)
    "fi": (24, "random"),
    "iaps": (40, "folds"),
    "artphoto": (40, "folds"),
    "abstract": (40, "folds"),
    "emotionroi": (24, "official"),
    "emotion6": (24, "random"),
    "twitter": (10, "random"),
    "emoset": (32, "official"),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_prepare_each_public_layout(tmp_path, repo_root, name):
    root = LAYOUTS[name](tmp_path / name)
    assert _prepare(repo_root, tmp_path, f"data.dataset={name}", f"data.root={root}") == 0
    df = read_manifest(tmp_path / "prepared" / "manifest.csv")
    n, scheme = PROTOCOLS[name]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(df) == n and metrics["num_images"] == n and metrics["split_scheme"] == scheme
    assert metrics["per_split"] == df.groupby("split").size().to_dict()
    if scheme == "folds":  # small sets: everything in 5-fold CV, each fold one fifth of every class
        assert set(df["split"]) == {"cv"}
        per_cell = df.groupby(["label", "fold"]).size().to_dict()
        assert per_cell == {(label, fold): 1 for label in MIKELS for fold in range(5)}  # 5 images a class
    elif name == "emotionroi":  # its own split files: the last image of each class is a test image
        assert df.groupby("split").size().to_dict() == {"train": 18, "test": 6}
        assert set(df[df["split"] == "test"]["path"].str.rsplit("/", n=1).str[1]) == {"4.jpg"}
    elif name == "emoset":  # its train/val/test files kept as published, nothing carved out of train
        assert df.groupby("split").size().to_dict() == {"train": 16, "val": 8, "test": 8}
        for split in ("train", "val", "test"):
            published = json.loads((root / f"{split}.json").read_text())  # [emotion, id, image path, annotation]
            assert set(df[df["split"] == split]["path"]) == {entry[2] for entry in published}
    else:  # random stratified: every class in both train and test
        assert set(df["split"]) <= {"train", "val", "test"}
        for split in ("train", "test"):
            assert set(df[df["split"] == split]["label"]) == set(df["label"]), split


def test_prepare_is_deterministic(tmp_path, repo_root):
    root = make_fi(tmp_path / "fi", per_class=6)
    _prepare(repo_root, tmp_path / "a", "data.dataset=fi", f"data.root={root}")
    _prepare(repo_root, tmp_path / "b", "data.dataset=fi", f"data.root={root}")
    a = (tmp_path / "a" / "prepared" / "manifest.csv").read_bytes()
    assert a == (tmp_path / "b" / "prepared" / "manifest.csv").read_bytes()


def _bomb(path):
    from PIL import Image

    Image.new("L", (4, 4)).save(path)
    _patch_png_size(path, 90_000, 90_000)


BREAKERS = {  # case -> (break the copy under emotion_dataset/, the error it must give, given the dataset root)
    "truncated JPEG": (
        lambda d: (d / "awe" / "awe_0.jpg").write_bytes((d / "awe" / "awe_0.jpg").read_bytes()[:300]),
        lambda root: f"{root}/emotion_dataset/awe/awe_0.jpg: corrupt or truncated image",
    ),
    "text file named .jpg": (
        lambda d: (d / "fear" / "fear_9.jpg").write_text("hello"),
        lambda root: f"{root}/emotion_dataset/fear/fear_9.jpg: not an image",
    ),
    "decompression bomb": (
        lambda d: _bomb(d / "anger" / "anger_9.png"),
        lambda root: f"{root}/emotion_dataset/anger/anger_9.png: decompression bomb refused",
    ),
    "missing label dir": (
        lambda d: shutil.rmtree(d / "fear"),
        lambda root: f"{root}/emotion_dataset: label directory 'fear' missing",
    ),
    "missing dataset dir": (lambda d: shutil.rmtree(d.parent), lambda root: f"{root}: directory not found"),
}


@pytest.mark.parametrize("case", sorted(BREAKERS))
def test_bad_input_one_line_error_and_earlier_outputs_intact(tmp_path, repo_root, capsys, case):
    root = make_fi(tmp_path / "fi")
    assert _prepare(repo_root, tmp_path, "data.dataset=fi", f"data.root={root}") == 0
    before = {p: p.read_bytes() for p in (tmp_path / "prepared").iterdir()}
    capsys.readouterr()
    breaker, needle = BREAKERS[case]
    breaker(root / "emotion_dataset")
    assert _prepare(repo_root, tmp_path, "data.dataset=fi", f"data.root={root}") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {needle(root)}") and err.count("\n") == 1, err
    assert {p: p.read_bytes() for p in (tmp_path / "prepared").iterdir()} == before
    assert not list((tmp_path / "prepared").glob(".*tmp"))


def test_a_failure_while_writing_leaves_the_previous_three_files_together(tmp_path, repo_root, monkeypatch):
    """The manifest, skipped.csv and dataset.json are replaced together: a crash after the new manifest was written
    (here: dataset.json's write fails) leaves the previous three, never a new manifest beside an old dataset.json."""
    from image_emotion.stages import prepare

    root = make_fi(tmp_path / "fi", per_class=6)
    assert _prepare(repo_root, tmp_path, "data.dataset=fi", f"data.root={root}") == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "prepared").iterdir()}
    (root / "emotion_dataset" / "awe" / "awe_0.jpg").unlink()  # the next manifest differs from the first

    written = prepare.write_json_atomic

    def fails_on_dataset_json(path, value):
        if Path(path).name == "dataset.json":
            raise OSError(28, "No space left on device")
        return written(path, value)

    monkeypatch.setattr(prepare, "write_json_atomic", fails_on_dataset_json)
    with pytest.raises(OSError, match="No space left"):
        prepare.run(
            load_config(repo_root / "params.yaml", ["data.dataset=fi", f"data.root={root}"]),
            prepare.PreparePaths(tmp_path / "prepared", tmp_path / "metrics.json"),
        )
    assert {p.name: p.read_bytes() for p in (tmp_path / "prepared").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_bad_input_skipped_on_request(tmp_path, repo_root):
    root = make_fi(tmp_path / "fi")
    (root / "emotion_dataset" / "fear" / "fear_9.jpg").write_text("hello")
    assert _prepare(repo_root, tmp_path, "data.dataset=fi", f"data.root={root}", "data.on_error=skip") == 0
    skipped = (tmp_path / "prepared" / "skipped.csv").read_text().splitlines()
    assert skipped[0] == "path,reason,bad" and skipped[1].startswith("emotion_dataset/fear/fear_9.jpg,")
    assert json.loads((tmp_path / "metrics.json").read_text())["num_bad"] == 1


def test_bad_params_are_one_line_errors(tmp_path, repo_root, capsys):
    assert _prepare(repo_root, tmp_path, "data.dataset=imagenet") == 2
    assert "data.dataset: Input should be 'synthetic', 'fi'" in capsys.readouterr().err
    assert main(["prepare", "--params", str(tmp_path / "none.yaml")]) == 2
    assert "params file not found" in capsys.readouterr().err
    assert _prepare(repo_root, tmp_path, "prepare.split={train: 0.9, test: 0.2}") == 2
    assert "train + val + test must be 1, got 1.15" in capsys.readouterr().err
    assert _prepare(repo_root, tmp_path, "prepare.fold=3") == 2
    assert "unknown key 'prepare.fold' (did you mean 'prepare.folds'?)" in capsys.readouterr().err


def _official(splits: dict[str, int]):
    """A LoadResult whose loader set the split (the 'official' scheme), ``splits``: images per split, 8 classes."""
    from image_emotion.data.datasets.base import LoadResult
    from image_emotion.data.manifest import make_manifest

    rows = [
        {"path": f"{split}/{i}.jpg", "label": MIKELS[i % 8], "label_set": "mikels8", "split": split}
        for split, n in splits.items()
        for i in range(n)
    ]
    return LoadResult(make_manifest(rows), [], "official", Path("."))


def test_an_official_validation_split_is_kept_and_a_missing_one_is_carved_from_train():
    from image_emotion.config import PrepareConfig
    from image_emotion.stages.prepare import assign_splits

    published = _official({"train": 160, "val": 40, "test": 40})  # EmoSet ships train/val/test
    assign_splits(published, PrepareConfig())
    assert published.manifest["split"].value_counts().to_dict() == {"train": 160, "val": 40, "test": 40}
    assert (published.manifest["split"] == published.manifest["path"].str.split("/").str[0]).all()
    two = _official({"train": 160, "test": 40})  # EmotionROI ships train/test: validation from train, stratified
    assign_splits(two, PrepareConfig())
    counts = two.manifest["split"].value_counts().to_dict()
    assert PrepareConfig().split.to_dict() == {"train": 0.8, "val": 0.05, "test": 0.15}  # the shares below
    assert counts == {"train": 152, "val": 8, "test": 40}  # one of each class's 20 (20 x 0.05 / 0.85 = 1.2)
    val = two.manifest[two.manifest["split"] == "val"]
    assert sorted(val["label"]) == sorted(MIKELS)
    assert set(two.manifest.loc[two.manifest["split"] == "val", "path"].str.split("/").str[0]) == {"train"}


def test_the_pixel_limit_a_set_was_prepared_with_holds_in_every_later_stage(tmp_path, repo_root):
    """``images.max_pixels`` is recorded with the prepared set and every later decode (extraction, training,
    overlays) keeps it: a limit raised for prepare is not undone by the default later, nor a lowered one."""
    from image_emotion.data.torch_data import DetectionDataset, PreparedDataset
    from image_emotion.errors import ImageDecodeError

    root = LAYOUTS["fi"](tmp_path / "fi")
    assert _prepare(repo_root, tmp_path, "data.dataset=fi", f"data.root={root}", "images.max_pixels=123456789") == 0
    data = PreparedDataset.load(tmp_path / "prepared")
    assert data.max_pixels == 123456789 and data.split("train").max_pixels == 123456789
    first = data.manifest["path"].iloc[0]
    width, height = data.image(first).size
    info = json.loads((tmp_path / "prepared/dataset.json").read_text())
    (tmp_path / "prepared/dataset.json").write_text(json.dumps({**info, "max_pixels": width * height - 1}))
    tight = PreparedDataset.load(tmp_path / "prepared")
    with pytest.raises(ImageDecodeError, match=f"over the limit of {width * height - 1}"):
        tight.tensor_image(first)
    rows = tight.manifest.assign(boxes=[[[0.0, 0.0, 4.0, 4.0]]] * len(tight.manifest))
    with pytest.raises(ImageDecodeError, match="over the limit"):
        DetectionDataset.emotional_regions(PreparedDataset(rows, tight.root, "fi", "mikels8", tight.max_pixels))[0]
