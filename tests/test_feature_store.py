"""Features that stream: the head trains on a cache on disk read one mini-batch at a time, with exactly the
results of the same features held in memory, and reading leaves no file pages in the process."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from image_emotion.config import HeadTraining
from image_emotion.training.feature_cache import (
    CacheError,
    missing_shards,
    new_index,
    read_index,
    shard_ranges,
    write_shard,
)
from image_emotion.training.feature_store import FeatureStore, load_cache
from image_emotion.training.heads import HeadData, predict, train_head, train_lambda_heads

N, SHARD, K, DG, DL, C = 70, 16, 3, 12, 6, 4  # 5 shards, the last of 6 images


def _features(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "global": torch.randn(n, DG, generator=g),
        "emotional": torch.randn(n, K, DL, generator=g),
        "object": torch.randn(n, K, DL, generator=g),
        "emotional_boxes": torch.rand(n, K, 4, generator=g) * 100,
    }


def _write_cache(cache: Path, features: dict[str, torch.Tensor], shard_size: int = SHARD) -> None:
    n = len(features["global"])
    index = new_index("f" * 16, n, shard_size)
    for sid, start, stop in shard_ranges(n, shard_size):
        part = {k: v[start:stop] for k, v in features.items()}
        write_shard(cache, index, sid, start, stop, {**part, "paths": [f"img{i}.jpg" for i in range(start, stop)]})


@pytest.fixture
def cache(tmp_path):
    features = _features(N)
    _write_cache(tmp_path / "cache", features)
    return tmp_path / "cache", features


def _targets(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n,), generator=g)
    dist = torch.softmax(torch.randn(n, C, generator=g), 1)
    return labels, dist, dist.gather(1, labels[:, None])[:, 0]


def test_rows_come_back_in_the_order_asked_across_shards_as_float16_rounded_float32(cache):
    directory, features = cache
    store = FeatureStore(directory)
    assert len(store) == N and store.paths[17] == "img17.jpg" and store.shapes["emotional"] == (K, DL)
    index = [69, 0, 33, 15, 16, 33]  # last shard, first, middle, both sides of a shard border, a repeat
    rows = store.rows(index)
    for key in ("global", "emotional", "object"):
        assert rows[key].dtype == torch.float32
        assert torch.equal(rows[key], features[key][index].half().float()), key
    assert torch.equal(rows["emotional_boxes"], features["emotional_boxes"][index])  # stored as given
    assert store.rows([], ("global",))["global"].shape == (0, DG)
    with pytest.raises(IndexError, match=r"rows 0\.\.70 of 70"):
        store.rows([0, 70])


def test_streamed_training_equals_training_on_features_in_memory(cache):
    directory, _ = cache
    store = FeatureStore(directory)
    labels, dist, p_star = _targets(N)
    streamed = HeadData(store.all(), labels, dist, p_star)
    in_memory = HeadData({k: v for k, v in load_cache(directory).items() if k in ("global", "emotional", "object")},
                         labels, dist, p_star)  # fmt: skip
    hp = HeadTraining(epochs=3, batch_size=16, lr=0.05)
    train = torch.arange(0, 50)
    a = train_head(streamed.select(train), (DG, DL, K), C, "global+emotional", "multi", 0.4, hp, 8)
    b = train_head(in_memory.select(train), (DG, DL, K), C, "global+emotional", "multi", 0.4, hp, 8)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert store.largest_read == 13  # 50 images in ceil(50/16) = 4 near-equal batches: 13, 13, 12, 12

    heads = train_lambda_heads(streamed.select(train), (DG, DL, K), C, "global+emotional", [0.0, 0.4], hp, 8)
    torch.testing.assert_close(heads[1].fc2.weight, a.fc2.weight, atol=1e-6, rtol=0)  # vmapped: float rounding
    test = streamed.select(torch.arange(50, N))
    probs = predict(a, test, batch_size=8)
    assert store.largest_read == 13  # predicted 8 at a time
    assert torch.equal(probs, predict(b, in_memory.select(torch.arange(50, N))))
    assert probs.shape == (20, C)


def _rss_file_kb() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"RssFile:\s+(\d+) kB", status).group(1))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_reading_every_row_in_batches_leaves_no_file_pages_resident(tmp_path):
    n = 4096  # 4096 x (12 + 2·3·6) float16 + boxes: ~0.6 MB, plus a 16 MB array touched page by page below
    features = _features(n)
    features["global"] = torch.randn(n, 2048)  # 4 KB per image in float16: one page per row
    _write_cache(tmp_path / "big", features, shard_size=1024)
    store = FeatureStore(tmp_path / "big")
    before = _rss_file_kb()
    for start in range(0, n, 256):
        assert torch.equal(store.rows(np.arange(start, start + 256), ("global",))["global"],
                           features["global"][start : start + 256].half().float())  # fmt: skip
    grown = _rss_file_kb() - before
    assert grown < 1024, f"{grown} kB of feature file pages resident after reading all 16 MB"
    # the same reads through a memory map keep the pages in the process: what the check above would catch
    mapped = np.load(tmp_path / "big" / "shard-00000.global.npy", mmap_mode="r")
    before = _rss_file_kb()
    _ = [np.array(mapped[i : i + 256]) for i in range(0, 1024, 256)]
    assert _rss_file_kb() - before > 3000


def test_a_corrupt_or_missing_array_is_refused_in_one_line(cache):
    directory, _ = cache
    target = directory / "shard-00002.object.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CacheError) as err:
        FeatureStore(directory)
    assert "shard 00002 is missing or corrupt" in str(err.value) and "\n" not in str(err.value)
    (directory / "shard-00003.paths.json").unlink()
    _, todo = missing_shards(directory, "f" * 16, N, SHARD)
    assert [sid for sid, _, _ in todo] == ["00002", "00003"]  # recomputed by the next extraction, never used
    with pytest.raises(CacheError, match="no feature cache"):
        FeatureStore(directory / "absent")


def test_a_shard_whose_tensors_differ_from_the_first_is_refused(tmp_path):
    features = _features(N)
    index = new_index("f" * 16, N, SHARD)
    for sid, start, stop in shard_ranges(N, SHARD):
        part = {k: v[start:stop] for k, v in features.items()}
        if sid == "00003":  # another detector's width: its rows would be read at the wrong offsets
            part["global"] = torch.zeros(stop - start, DG + 1)
        write_shard(tmp_path / "c", index, sid, start, stop, {**part, "paths": [str(i) for i in range(start, stop)]})
    with pytest.raises(CacheError, match="shard 00003 holds other tensors than shard 00000"):
        FeatureStore(tmp_path / "c")


def test_a_cache_of_the_earlier_one_file_format_is_recomputed_and_its_files_removed(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "shard-00000.pt").write_bytes(b"old shard")
    entry = {"file": "shard-00000.pt", "sha256": "0" * 64, "start": 0, "stop": 10}
    (old / "index.json").write_text(
        json.dumps({"fingerprint": "f" * 16, "num_images": 10, "shard_size": 16, "shards": {"00000": entry}})
    )
    index, todo = missing_shards(old, "f" * 16, 10, 16)
    assert todo == [("00000", 0, 10)] and index["format"] == 2 and index["shards"] == {}
    assert not (old / "shard-00000.pt").exists()
    assert read_index(old)["shards"] == {"00000": entry}  # the index on disk changes only with the next shard
