"""``image-emotion predict`` as people use it: files, folders and globs; a table by default, JSON, region overlays;
a bad file is reported and the others are answered (exit status 1); no model is a one-line error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from image_emotion.cli import main
from image_emotion.data.emotions import MIKELS8


@pytest.fixture
def photos(tiny_run, tmp_path, monkeypatch):
    """A folder of 3 synthetic images (one in a sub-folder), a corrupt file beside them, and the tiny model's
    files; no registry (the tracking URI points at a store that does not exist)."""
    work, _ = tiny_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent.db'}")
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    sources = sorted((work / "synthetic/main/images").iterdir())[:3]
    for i, src in enumerate(sources):
        shutil.copy(src, folder / ("sub" if i == 2 else "") / f"p{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    model = ["--detector", str(work / "models/detector.pt"), "--head", str(work / "models/classifier/head.pt")]
    return folder, model


def test_a_folder_and_a_glob_give_a_table_and_a_bad_file_does_not_stop_the_others(photos, capsys):
    folder, model = photos
    status = main(["predict", str(folder / "sub"), str(folder / "p*.png"), str(folder / "broken.jpg"), *model])
    out, err = capsys.readouterr()
    assert status == 1  # one file failed
    lines = [line for line in out.splitlines() if line.strip()]  # kfp.local, run earlier, may re-route prints
    assert lines[0].split() == ["image", "emotion", "confidence", "polarity"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert sorted(rows) == sorted(str(folder / p) for p in ("sub/p2.png", "p0.png", "p1.png"))
    assert err.strip().splitlines() == [
        f"model: {model[1]} + {model[3]}",  # which model answered, and once what it learned from
        "warning: this model was trained on the embedded synthetic images, not real photos: its answers show the "
        "mechanics, not what a photo evokes; train on a real dataset for that (docs/pipeline.md: running on the "
        "real datasets)",
        f"failed: {folder / 'broken.jpg'}: not an image PIL can decode (JPEG, PNG, BMP, GIF, TIFF, WebP); replace or "
        "remove it",
    ]
    # the table's figures are the model's answer: label, its probability (3 decimals) and its polarity
    assert main(["predict", str(folder), "--json", *model]) == 1
    answers = json.loads(capsys.readouterr().out)
    for path, (label, confidence, polarity) in rows.items():
        expected = answers[path]
        assert (label, confidence, polarity) == (
            expected["label"], f"{expected['probabilities'][expected['label']]:.3f}", MIKELS8.polarity(label)
        )  # fmt: skip


def test_json_carries_the_distribution_and_the_regions(photos, capsys):
    folder, model = photos
    assert main(["predict", str(folder / "p0.png"), "nothing-here.png", "--json", *model]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["nothing-here.png"] == {"error": "no such file or folder"}
    r = result[str(folder / "p0.png")]
    assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
    assert r["confidence"] == r["probabilities"][r["label"]] and r["polarity"] == MIKELS8.polarity(r["label"])
    assert len(r["regions"]) == 4  # detector.top_k of the tiny config
    assert all(set(b) == {"x1", "y1", "x2", "y2", "score"} for b in r["regions"])  # named fields
    assert all(b["x1"] <= b["x2"] and b["y1"] <= b["y2"] and 0 <= b["score"] <= 2**0.5 for b in r["regions"])
    scores = [b["score"] for b in r["regions"]]
    assert scores == sorted(scores, reverse=True)  # the best region first


def test_overlays_draw_the_top_regions_on_each_image(photos, capsys, tmp_path):
    folder, model = photos
    out_dir = tmp_path / "overlays"
    assert main(["predict", str(folder), "--json", "--overlay", str(out_dir), *model]) == 1  # broken.jpg
    result = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out_dir.iterdir()) == ["p0.png", "p1.png", "p2.png"]
    r = result[str(folder / "p0.png")]
    overlay = np.asarray(Image.open(out_dir / "p0.png").convert("RGB")).astype(int)
    source = Image.open(folder / "p0.png")
    scale = max(source.size) and 320 / max(source.size)  # a small image is shown at 320 px on its longer side
    assert max(source.size) < 320 and overlay.shape[0] > round(source.height * scale) + 22 + 30  # caption, legend
    best = {k: v * scale for k, v in r["regions"][0].items()}
    x1, y1, x2 = round(best["x1"]), round(best["y1"]), round(best["x2"])
    edge = overlay[22 + min(max(y1, 0), round(source.height * scale) - 1), x1 : x2 + 1]
    assert (np.abs(edge - [200, 0, 0]).sum(axis=1) < 10).mean() > 0.5  # the best region's red top edge


def test_without_any_model_the_error_says_how_to_get_one(photos, capsys, tmp_path):
    folder, _ = photos
    missing = ["--detector", str(tmp_path / "d.pt"), "--head", str(tmp_path / "h.pt")]
    assert main(["predict", str(folder / "p0.png"), *missing]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no model:") and "dvc repro" in err and err.count("\n") == 1
