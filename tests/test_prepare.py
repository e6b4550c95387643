import json
import shutil
import subprocess

import pytest
from layouts import LAYOUTS, make_fi
from test_images import _patch_png_size

from image_emotion.cli import main
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


def test_prepare_embedded_default_via_the_console_script(tmp_path, repo_root):
    emb = tmp_path / "embedded"
    subprocess.run(
        [
            "image-emotion",
            "make-embedded",
            "--params",
            str(repo_root / "params.yaml"),
            "--out-dir",
            str(emb),
            "--set",
            "embedded.num_images=80",
            "--set",
            "embedded.image_size=96",
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
            f"data.root={emb}",
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
    assert info == {"dataset": "embedded", "root": emb.as_posix(), "label_set": "mikels8", "split_scheme": "random"}
    assert json.loads((tmp_path / "metrics.json").read_text()) == summary


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_prepare_each_public_layout(tmp_path, repo_root, name):
    root = LAYOUTS[name](tmp_path / name)
    assert _prepare(repo_root, tmp_path, f"data.dataset={name}", f"data.root={root}") == 0
    df = read_manifest(tmp_path / "prepared" / "manifest.csv")
    expected_splits = {"random": {"train", "test"}, "folds": {"cv"}, "official": {"train", "test"}}
    scheme = json.loads((tmp_path / "metrics.json").read_text())["split_scheme"]
    assert expected_splits[scheme] <= set(df["split"])
    assert (df["fold"] >= 0).all()


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


BREAKERS = {
    "truncated JPEG": (
        lambda d: (d / "awe" / "awe_0.jpg").write_bytes((d / "awe" / "awe_0.jpg").read_bytes()[:300]),
        "awe_0.jpg: corrupt or truncated image",
    ),
    "text file named .jpg": (lambda d: (d / "fear" / "fear_9.jpg").write_text("hello"), "fear_9.jpg: not an image"),
    "decompression bomb": (lambda d: _bomb(d / "anger" / "anger_9.png"), "anger_9.png: decompression bomb refused"),
    "missing label dir": (lambda d: shutil.rmtree(d / "fear"), "emotion_dataset: label directory 'fear' missing"),
    "missing dataset dir": (lambda d: shutil.rmtree(d.parent), "fi: directory not found"),
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
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert {p: p.read_bytes() for p in (tmp_path / "prepared").iterdir()} == before
    assert not list((tmp_path / "prepared").glob(".*tmp"))


def test_bad_input_skipped_on_request(tmp_path, repo_root):
    root = make_fi(tmp_path / "fi")
    (root / "emotion_dataset" / "fear" / "fear_9.jpg").write_text("hello")
    assert _prepare(repo_root, tmp_path, "data.dataset=fi", f"data.root={root}", "data.on_error=skip") == 0
    skipped = (tmp_path / "prepared" / "skipped.csv").read_text().splitlines()
    assert skipped[0] == "path,reason,bad" and skipped[1].startswith("emotion_dataset/fear/fear_9.jpg,")
    assert json.loads((tmp_path / "metrics.json").read_text())["num_bad"] == 1


def test_bad_params_are_one_line_errors(tmp_path, repo_root, capsys):
    assert _prepare(repo_root, tmp_path, "data.dataset=imagenet") == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err
    assert main(["prepare", "--params", str(tmp_path / "none.yaml")]) == 2
    assert "params file not found" in capsys.readouterr().err
    assert _prepare(repo_root, tmp_path, "prepare.split={train: 0.9, test: 0.2}") == 2
    assert "sum to 1" in capsys.readouterr().err
