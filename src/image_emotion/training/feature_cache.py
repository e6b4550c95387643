"""On-disk cache of region features: shards of a few hundred images, each checked by SHA-256.

Layout of a cache directory::

    index.json      {"fingerprint", "num_images", "shard_size",
                     "shards": {"00003": {"file", "sha256", "start", "stop"}}}
    shard-00003.pt  {"paths": [...], "global": (n, Dg) fp16, "emotional": (n, K, Dl) fp16, "object": ...,
                     "emotional_boxes": (n, K, 4), "emotional_scores": (n, K), "object_boxes", "object_scores"}

Writing is streaming (one shard in memory at a time) and the index is rewritten atomically after every
shard, so an interrupted extraction keeps what it finished. A shard whose bytes do not match its recorded
hash, or that does not load, is recomputed by ``missing_shards`` and refused by ``load_cache``: a corrupt
entry is never used silently.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from image_emotion.errors import ImageEmotionError
from image_emotion.files import file_sha256, save_checkpoint, write_json_atomic

FLOAT_KEYS = ("global", "emotional", "object")


class CacheError(ImageEmotionError):
    """A feature cache that is missing, stale or corrupt."""


def _index_path(cache_dir: Path) -> Path:
    return cache_dir / "index.json"


def read_index(cache_dir: str | Path) -> dict[str, Any] | None:
    """The cache's index, or None when there is none or it is unreadable (then everything is recomputed)."""
    path = _index_path(Path(cache_dir))
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def new_index(fingerprint: str, num_images: int, shard_size: int) -> dict[str, Any]:
    return {"fingerprint": fingerprint, "num_images": num_images, "shard_size": shard_size, "shards": {}}


def shard_ranges(num_images: int, shard_size: int) -> list[tuple[str, int, int]]:
    """``(shard id, start, stop)`` covering ``0..num_images``."""
    return [(f"{i // shard_size:05d}", i, min(i + shard_size, num_images)) for i in range(0, num_images, shard_size)]


def shard_is_valid(cache_dir: Path, entry: dict[str, Any] | None) -> bool:
    """The shard file exists and its bytes hash to the recorded value."""
    if not entry:
        return False
    path = cache_dir / entry["file"]
    return path.is_file() and file_sha256(path) == entry["sha256"]


def missing_shards(cache_dir: str | Path, fingerprint: str, num_images: int, shard_size: int):
    """The index to continue from and the shard ranges still to compute (stale or corrupt ones included)."""
    cache_dir = Path(cache_dir)
    index = read_index(cache_dir)
    if (
        index is None
        or index.get("fingerprint") != fingerprint
        or index.get("num_images") != num_images
        or index.get("shard_size") != shard_size
    ):
        index = new_index(fingerprint, num_images, shard_size)
    todo = []
    for sid, start, stop in shard_ranges(num_images, shard_size):
        entry = index["shards"].get(sid)
        if not shard_is_valid(cache_dir, entry):
            if entry is not None:
                print(f"{cache_dir / entry['file']}: corrupt or missing cache entry; recomputing it", file=sys.stderr)
                del index["shards"][sid]
            todo.append((sid, start, stop))
    return index, todo


def write_shard(cache_dir: str | Path, index: dict[str, Any], sid: str, start: int, stop: int, shard: dict) -> None:
    """Write one shard atomically, record its hash, then rewrite the index atomically."""
    cache_dir = Path(cache_dir)
    name = f"shard-{sid}.pt"
    stored = {k: (v.to(torch.float16) if k in FLOAT_KEYS else v) for k, v in shard.items()}
    save_checkpoint(cache_dir / name, stored)
    index["shards"][sid] = {"file": name, "sha256": file_sha256(cache_dir / name), "start": start, "stop": stop}
    write_json_atomic(_index_path(cache_dir), index)


def load_cache(cache_dir: str | Path) -> dict[str, Any]:
    """All shards concatenated (features as float32), after checking every hash; raises ``CacheError``."""
    cache_dir = Path(cache_dir)
    index = read_index(cache_dir)
    if index is None:
        raise CacheError(f"{cache_dir}: no feature cache; run `image-emotion extract-regions` first")
    parts = []
    for sid, _, _ in shard_ranges(index["num_images"], index["shard_size"]):
        entry = index["shards"].get(sid)
        if not shard_is_valid(cache_dir, entry):
            raise CacheError(f"{cache_dir}: shard {sid} is missing or corrupt; re-run `image-emotion extract-regions`")
        try:
            parts.append(torch.load(cache_dir / entry["file"], map_location="cpu", weights_only=True))
        except Exception as exc:
            raise CacheError(
                f"{cache_dir / entry['file']}: cannot be read ({type(exc).__name__}); re-run extract-regions"
            ) from None
    out: dict[str, Any] = {"paths": [p for part in parts for p in part["paths"]]}
    for key in parts[0]:
        if key != "paths":
            tensor: Tensor = torch.cat([part[key] for part in parts])
            out[key] = tensor.float() if key in FLOAT_KEYS else tensor
    out["fingerprint"] = index["fingerprint"]
    return out
