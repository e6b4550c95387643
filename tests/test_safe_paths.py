"""One rule for paths read from data: relative, no ``..``, and (symlinks resolved) inside the root. Each hostile
input is reproduced on disk and refused in one line naming the path, where it came from and the fix, before any
file is opened or removed; ``predict``'s glob expansion ends on a symlink loop."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from layouts import make_emotion6, make_fi, make_twitter, save_image

from image_emotion.data.datasets import load_dataset
from image_emotion.data.manifest import make_manifest, read_manifest, write_manifest
from image_emotion.data.safe_paths import inside
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.errors import DatasetError
from image_emotion.inference.inputs import expand_inputs
from image_emotion.training.feature_cache import CacheError, merge_caches, missing_shards, shard_is_valid
from image_emotion.training.feature_store import FeatureStore

FIX = "paths in data files are relative to the dataset root and stay inside it"


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def _prepared(tmp_path: Path, paths: list[str]) -> Path:
    """A prepared directory (``manifest.csv`` + ``dataset.json``) whose image root is ``tmp_path / "root"``."""
    prepared = tmp_path / "prepared"
    prepared.mkdir(exist_ok=True)
    safe = [f"images/{i}.png" for i in range(len(paths))]
    write_manifest(
        make_manifest([{"path": p, "label": "awe", "label_set": "mikels8"} for p in safe]), prepared / "manifest.csv"
    )
    text = (prepared / "manifest.csv").read_text()
    for placeholder, path in zip(safe, paths, strict=True):  # the hostile value as it would sit in the file
        text = text.replace(f"{placeholder},", f"{path},", 1)
    (prepared / "manifest.csv").write_text(text)
    info = {"root": str(tmp_path / "root"), "dataset": "t", "label_set": "mikels8"}
    (prepared / "dataset.json").write_text(json.dumps(info))
    return prepared


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../../etc/passwd", "it has a '..' component"),
        ("images/../../x.png", "it has a '..' component"),
        ("/etc/passwd", "it is absolute"),
    ],
)
def test_a_manifest_row_leaving_the_root_is_refused_naming_the_row(tmp_path, path, reason):
    prepared = _prepared(tmp_path, ["images/ok.png", path])
    with pytest.raises(DatasetError) as err:
        read_manifest(prepared / "manifest.csv")
    assert re.fullmatch(
        re.escape(f"{prepared / 'manifest.csv'} row 3: path {path!r} is not inside the dataset root: {reason}; {FIX}")
        + r" \(no absolute path, no '\.\.', no symlink leading out\); fix or remove that entry",
        _one_line(err),
    )
    with pytest.raises(DatasetError, match=re.escape(f"row 3: path {path!r} is not inside")):
        PreparedDataset.load(prepared)


def _root_with_links(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    save_image(root / "images" / "real.png", 1)
    save_image(tmp_path / "outside" / "secret.png", 2)
    (root / "images" / "in.png").symlink_to(root / "images" / "real.png")
    (root / "images" / "up.png").symlink_to(Path("..", "images", "real.png"))  # relative, still inside
    (root / "images" / "out.png").symlink_to(tmp_path / "outside" / "secret.png")
    (root / "images" / "outdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    return root


def test_a_symlink_that_stays_inside_the_root_is_accepted(tmp_path):
    root = _root_with_links(tmp_path)
    assert inside(root, "images/in.png", "t") == root / "images" / "in.png"  # the name given, not its target
    data = PreparedDataset.load(_prepared(tmp_path, ["images/real.png", "images/in.png", "images/up.png"]))
    assert data.image("images/in.png").size == data.image("images/real.png").size == (40, 32)
    assert data.image("images/up.png").tobytes() == data.image("images/real.png").tobytes()


@pytest.mark.parametrize("path", ["images/out.png", "images/outdir/secret.png"])
def test_a_symlink_leading_out_of_the_root_is_refused(tmp_path, path):
    root = _root_with_links(tmp_path)
    prepared = _prepared(tmp_path, ["images/real.png", path])
    read_manifest(prepared / "manifest.csv")  # lexically fine: only the root tells
    with pytest.raises(DatasetError) as err:
        PreparedDataset.load(prepared)
    secret = (tmp_path / "outside" / "secret.png").resolve()
    assert _one_line(err).startswith(
        f"{prepared / 'manifest.csv'} row 3: path {path!r} is not inside the dataset root: it resolves to {secret} "
        f"(a symlink leads out of {root.resolve()}); {FIX}"
    )
    data = PreparedDataset(make_manifest([{"path": path, "label": "awe", "label_set": "mikels8"}]), root, "t", "awe")
    with pytest.raises(DatasetError, match=re.escape(f"t manifest path: path {path!r} is not inside the dataset")):
        data.image(path)


def test_a_walked_dataset_file_that_is_a_symlink_out_of_the_root_is_refused(tmp_path):
    root = make_fi(tmp_path / "fi")
    save_image(tmp_path / "outside" / "secret.jpg", 3)
    (root / "emotion_dataset" / "awe" / "awe_9.jpg").symlink_to(tmp_path / "outside" / "secret.jpg")
    with pytest.raises(DatasetError) as err:
        load_dataset("fi", root)
    assert _one_line(err).startswith(
        f"{root}: path 'emotion_dataset/awe/awe_9.jpg' is not inside the dataset root: it resolves to "
        f"{(tmp_path / 'outside' / 'secret.jpg').resolve()}"
    )


def _replace_line(path: Path, number: int, text: str) -> Path:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("name", "make", "file", "line"),
    [
        ("emotion6", make_emotion6, "ground_truth.txt", "{}\t5.1\t4.2\t0.7\t0.05\t0.05\t0.05\t0.05\t0.05\t0.05"),
        ("twitter", make_twitter, "five_agree.txt", "{} 1"),
    ],
)
@pytest.mark.parametrize(("path", "reason"), [("../../../etc/passwd", "it has a '..' component"),
                                              ("/etc/passwd", "it is absolute")])  # fmt: skip
def test_an_annotation_row_leaving_the_root_is_refused_naming_file_and_line(
    tmp_path, name, make, file, line, path, reason
):
    root = make(tmp_path / name)
    (tmp_path / "etc").mkdir()
    save_image(tmp_path / "etc" / "passwd", 4, fmt="PNG")  # what '../../../etc/passwd' would reach from images/
    listed = _replace_line(root / file, 3, line.format(path))
    with pytest.raises(DatasetError) as err:
        load_dataset(name, root)
    assert _one_line(err).startswith(f"{listed} line 3: path {path!r} is not inside the dataset root: {reason}; {FIX}")


def test_a_synthetic_annotation_row_with_an_absolute_path_is_one_line_not_a_traceback(tmp_path):
    root = tmp_path / "synthetic"
    save_image(root / "images" / "0.png", 5)
    votes, boxes = json.dumps([1, 0, 0, 0, 0, 0, 0, 0]), json.dumps([])
    rows = [f'images/0.png,awe,mikels8,"{votes}","{boxes}"', f'/etc/passwd,awe,mikels8,"{votes}","{boxes}"']
    (root / "annotations.csv").write_text("\n".join(["path,label,label_set,votes,boxes", *rows]) + "\n")
    with pytest.raises(DatasetError) as err:
        load_dataset("synthetic", root)
    assert _one_line(err).startswith(
        f"{root / 'annotations.csv'} line 3: path '/etc/passwd' is not inside the dataset root: it is absolute; "
    )


CRAFTED_INDEXES = {
    "earlier format": {"shards": {"00000": {"file": "../victim.txt", "sha256": "0" * 64, "start": 0, "stop": 4}}},
    "shard of another part": {
        "format": 2, "fingerprint": "f" * 16, "num_images": 8, "shard_size": 4,
        "shards": {"00001": {"start": 4, "stop": 8, "files": {"paths": {"file": "../victim.txt", "sha256": "0"}}}},
    },
    "sub-folder name": {
        "format": 2, "fingerprint": "f" * 16, "num_images": 8, "shard_size": 4,
        "shards": {"00001": {"start": 4, "stop": 8, "files": {"paths": {"file": "sub/victim.txt", "sha256": "0"}}}},
    },
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(CRAFTED_INDEXES))
def test_a_crafted_cache_index_removes_nothing_and_is_refused(tmp_path, kind):
    cache = tmp_path / "cache"
    (cache / "sub").mkdir(parents=True)
    victims = [tmp_path / "victim.txt", cache / "sub" / "victim.txt"]
    for victim in victims:
        victim.write_text("keep me")
    (cache / "index.json").write_text(json.dumps(CRAFTED_INDEXES[kind]))
    with pytest.raises(CacheError) as err:
        missing_shards(cache, "f" * 16, 8, 4, shard=0, shards=2)  # shard 00001 belongs to the other part
    name = "sub/victim.txt" if kind == "sub-folder name" else "../victim.txt"
    sid = "00001" if kind != "earlier format" else "00000"
    assert re.fullmatch(
        re.escape(f"{cache / 'index.json'} shard {sid}: path {name!r} is not ")
        + r"(inside the cache directory: it has a '\.\.' component|a plain file name of the cache directory); "
        + re.escape(
            "index.json names files of the cache directory itself; delete the cache and run extract-regions again"
        ),
        _one_line(err),
    )
    assert all(v.read_text() == "keep me" for v in victims)


def test_readers_and_merging_refuse_a_crafted_file_name(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (tmp_path / "victim.txt").write_text("keep me")
    entry = {"start": 0, "stop": 4, "files": {"paths": {"file": "../victim.txt", "sha256": "0"}}}
    index = {"format": 2, "fingerprint": "f" * 16, "num_images": 4, "shard_size": 4, "shards": {"00000": entry}}
    (cache / "index.json").write_text(json.dumps(index))
    with pytest.raises(CacheError, match=r"path '\.\./victim\.txt' is not inside the cache directory"):
        shard_is_valid(cache, index["shards"]["00000"])
    with pytest.raises(CacheError, match=r"path '\.\./victim\.txt' is not inside the cache directory"):
        FeatureStore(cache)
    with pytest.raises(CacheError, match=r"path '\.\./victim\.txt' is not inside the cache directory"):
        merge_caches([cache], tmp_path / "merged")
    assert (tmp_path / "victim.txt").read_text() == "keep me" and not (tmp_path / "merged").exists()


def _expand_within(arguments: list[str], seconds: float):
    """``expand_inputs(arguments)``, failing the test if it has not returned after ``seconds``."""
    out: dict[str, object] = {}
    worker = threading.Thread(target=lambda: out.update(result=expand_inputs(arguments)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"expand_inputs({arguments}) still running after {seconds} s"
    return out["result"]


def test_glob_expansion_ends_on_a_symlink_loop_and_finds_each_image_once(tmp_path):
    top = tmp_path / "dir"
    save_image(top / "a.png", 6)
    save_image(top / "sub" / "b.jpg", 7)
    (top / "sub" / "up").symlink_to("..", target_is_directory=True)  # dir/sub/up/sub/up/... forever
    (top / "self").symlink_to(".", target_is_directory=True)
    (top / "sub" / "loop").symlink_to(top / "sub", target_is_directory=True)
    expected = [top / "a.png", top / "sub" / "b.jpg"]
    for pattern in (top / "**", top / "**" / "*.*g"):
        files, failures = _expand_within([str(pattern)], 20)
        assert files == expected and failures == {}
    files, failures = _expand_within([str(top / "**"), str(top)], 20)
    assert files == expected and failures == {}
