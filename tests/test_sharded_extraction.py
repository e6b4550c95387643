"""Sharded region extraction: ``extract-regions --shard I/N`` computes a round-robin share of the cache's shard
ranges, and ``merge-features`` joins the N parts into exactly the cache an unsharded extraction writes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tiny import detector_inputs

from image_emotion.cli import main
from image_emotion.config import load_config
from image_emotion.errors import ConfigError
from image_emotion.stages import extract_regions
from image_emotion.stages.paths import ExtractPaths
from image_emotion.training.feature_cache import (
    CacheError,
    merge_caches,
    read_index,
    shard_ranges,
    shard_ranges_of,
)
from image_emotion.training.feature_store import load_cache

SHARD_SIZE = 6  # 32 images -> 6 cache shards, the last one of 2 images


def test_one_shard_owns_every_range():
    assert shard_ranges_of(100, 8, 0, 1) == shard_ranges(100, 8)
    assert shard_ranges_of(0, 8, 0, 1) == []


def test_three_shards_deal_the_ranges_round_robin():
    ranges = shard_ranges(95, 10)  # 10 ranges, the last of 5 images
    assert len(ranges) == 10
    parts = [shard_ranges_of(95, 10, i, 3) for i in range(3)]
    assert [[sid for sid, _, _ in part] for part in parts] == [
        ["00000", "00003", "00006", "00009"],
        ["00001", "00004", "00007"],
        ["00002", "00005", "00008"],
    ]
    assert parts[0][-1] == ("00009", 90, 95)
    assert parts[2][0] == ("00002", 20, 30)
    owned = [r for part in parts for r in part]
    assert sorted(owned) == ranges and len(set(owned)) == len(ranges)  # disjoint, and together all of them
    assert shard_ranges_of(20, 10, 2, 3) == []  # more shards than ranges: a part may own none


@pytest.mark.parametrize(("shard", "shards"), [(3, 3), (-1, 3), (0, 0), (0, -2)])
def test_a_shard_outside_its_count_is_a_one_line_error(shard, shards):
    with pytest.raises(ConfigError) as err:
        shard_ranges_of(10, 2, shard, shards)
    assert "\n" not in str(err.value) and "--shard" in str(err.value)


@pytest.mark.parametrize("spec", ["3/3", "1", "a/2", "0/0", "-1/2", "1/2/3"])
def test_the_cli_refuses_a_bad_shard_spec(spec, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["extract-regions", "--shard", spec])
    assert exit_.value.code == 2
    assert "--shard" in capsys.readouterr().err


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny synthetic regions set prepared (32 images) and a detector (untrained: extraction is what is
    compared), with params.yaml using small cache shards."""
    root = tmp_path_factory.mktemp("sharded")
    detector_inputs(root, root / "prepared", root / "detector.pt")  # writes root/params.yaml (tiny)
    return root


def _overrides(project):
    return [f"extract.shard_size={SHARD_SIZE}", "device=cpu", f"mlflow.tracking_uri=sqlite:///{project / 'mlflow.db'}"]


def _cli(project, features, *extra):
    return main(
        [
            "extract-regions",
            "--params",
            str(project / "params.yaml"),
            *(arg for override in _overrides(project) for arg in ("--set", override)),
            "--detector",
            str(project / "detector.pt"),
            "--objects",
            str(project / "detector.pt"),  # an untrained detector: extraction is what is compared
            "--prepared",
            str(project / "prepared"),
            "--features",
            str(features),
            "--metrics",
            str(features.parent / f"{features.name}.json"),
            *extra,
        ]
    )


def _files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.slow
def test_merged_shards_are_the_unsharded_cache_byte_for_byte(project, tmp_path, capsys):
    whole = tmp_path / "A"
    assert _cli(project, whole) == 0
    assert len(read_index(whole)["shards"]) == 6
    parts = [tmp_path / f"B{i}" for i in range(3)]
    for i, part in enumerate(parts):
        assert _cli(project, part, "--shard", f"{i}/3") == 0
        metrics = json.loads((tmp_path / f"B{i}.json").read_text())
        assert metrics["shard"] == {"index": i, "of": 3}
        assert metrics["datasets"]["B" + str(i)]["shards_computed"] == 2
        assert sorted(read_index(part)["shards"]) == [sid for sid, _, _ in shard_ranges_of(32, SHARD_SIZE, i, 3)]
        with pytest.raises(CacheError, match="is missing or corrupt"):  # a part alone is not a complete cache
            load_cache(part)
    assert "shard" not in json.loads((tmp_path / "A.json").read_text())

    merged = tmp_path / "M"
    capsys.readouterr()
    assert main(["merge-features", "--parts", *map(str, parts), "--features", str(merged)]) == 0
    assert json.loads(capsys.readouterr().out) == {"features": str(merged), "parts": 3, "shards": 6, "images": 32}
    assert _files(merged) == _files(whole)  # same names, same bytes, index.json included
    a, m = load_cache(whole), load_cache(merged)
    assert a.keys() == m.keys() and a["paths"] == m["paths"] and a["fingerprint"] == m["fingerprint"]
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, m[key]), key

    # a part run in a full cache's directory (the stage's Python API) reuses its shards and keeps only them
    reused = tmp_path / "reused"
    shutil.copytree(whole, reused)
    config = load_config(project / "params.yaml", _overrides(project))
    paths = ExtractPaths(
        project / "detector.pt", project / "detector.pt", (project / "prepared",), (reused,), tmp_path / "reused.json"
    )
    metrics = extract_regions.run(config, paths, shard=(1, 3))
    assert metrics["datasets"]["reused"] == {"images": 12, "shards_computed": 0, "shards_reused": 2}
    assert _files(reused) == _files(parts[1])

    # a part missing one of its shards, or the same part twice: one-line errors naming them
    broken = tmp_path / "B1-broken"
    shutil.copytree(parts[1], broken)
    (broken / "shard-00004.global.npy").unlink()
    with pytest.raises(CacheError) as err:
        merge_caches([parts[0], broken, parts[2]], tmp_path / "M2")
    assert "shard 00004" in str(err.value) and str(broken) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "M2").exists()
    capsys.readouterr()
    twice = [str(parts[0]), str(parts[1]), str(parts[1])]
    assert main(["merge-features", "--parts", *twice, "--features", str(merged)]) == 2
    message = capsys.readouterr().err
    assert str(parts[1]) in message and "twice" in message and message.count("\n") == 1
    assert _files(merged) == _files(whole)  # a failed merge leaves the earlier output alone
    with pytest.raises(CacheError, match=r"shard 00002 \(images 12\.\.17\) \(and 1 more\) is in none"):
        merge_caches(parts[:2], tmp_path / "M3")
    with pytest.raises(CacheError, match="shard 00000 is in both"):
        merge_caches([parts[0], whole], tmp_path / "M4")
    odd = tmp_path / "odd"
    shutil.copytree(parts[2], odd)
    index = read_index(odd)
    index["fingerprint"] = "0" * 16
    (odd / "index.json").write_text(json.dumps(index))
    with pytest.raises(CacheError, match=f"{odd}: fingerprint"):
        merge_caches([parts[0], parts[1], odd], tmp_path / "M5")
