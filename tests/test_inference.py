"""The inference package's parts that need no model: which files the arguments name, what the CLI prints from
typed answers, and the one-line error when no model can answer."""

from pathlib import Path

import pytest
from PIL import Image

from image_emotion.errors import ConfigError
from image_emotion.inference import inputs, tables
from image_emotion.inference.models import resolve
from image_emotion.inference.predict import Prediction
from image_emotion.inference.retrieve import Answer, Neighbour


def test_arguments_name_files_folders_and_globs_once_each(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.png", "a/b/y.JPG", "a/notes.txt", "z.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG") if not name.endswith(".txt") else None
    (tmp_path / "a/notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    args = [
        str(tmp_path / "a"),
        str(tmp_path / "*.png"),
        str(tmp_path / "a/x.png"),
        "missing.png",
        str(tmp_path / "empty"),
    ]
    files, failures = inputs.expand_inputs(args)
    assert files == [tmp_path / "a/b/y.JPG", tmp_path / "a/x.png", tmp_path / "z.png"]
    assert failures == {
        "missing.png": "no such file or folder",
        str(tmp_path / "empty"): "no image files there (jpg, png, bmp, gif, webp, tif)",
    }
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    decoded, failed = inputs.decode([tmp_path / "z.png", tmp_path / "bad.png"])
    assert list(decoded) == [tmp_path / "z.png"] and decoded[tmp_path / "z.png"].size == (4, 4)
    assert list(failed) == [str(tmp_path / "bad.png")] and "remove it" in failed[str(tmp_path / "bad.png")]


def test_tables_print_the_typed_answers():
    p = Prediction("awe", "positive", 0.61234, {"awe": 0.61234, "fear": 0.38766}, [[0, 0, 4, 4, 0.9]], (4, 4))
    assert tables.predictions({Path("img.png"): p}).splitlines() == [
        "image    emotion      confidence  polarity",
        "img.png  awe               0.612  positive",
    ]
    a = Answer("fear", "negative", [Neighbour(1, "n1.png", "sadness", 0.125), Neighbour(2, "n2.png", None, 0.5)])
    assert tables.neighbours({Path("q.png"): a}, "predicted").splitlines() == [
        "q.png: fear (negative)",
        "  rank  distance  predicted  path",
        "     1    0.1250  sadness    n1.png",
        "     2    0.5000  None       n2.png",
    ]
    assert a.to_dict()["neighbours"][1] == {"rank": 2, "id": "n2.png", "label": None, "distance": 0.5}
    assert tables.failures({"b.png": "truncated"}) == "failed: b.png: truncated"


def test_no_model_anywhere_is_one_line_naming_the_files_and_the_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent.db'}")
    with pytest.raises(ConfigError) as error:
        resolve("generative", params=tmp_path / "none.yaml")
    message = str(error.value)
    assert message.startswith("no model: models/generative not found and no champion in the registry")
    assert "image-emotion train-generative" in message and "\n" not in message
    assert not (tmp_path / "absent.db").exists()  # looking for a champion never creates a store
