"""On-disk cache of region features: shards of a few hundred images, every file checked by SHA-256.

Layout of a cache directory (format 2)::

    index.json                  {"format": 2, "fingerprint", "num_images", "shard_size",
                                 "shards": {"00003": {"start", "stop", "files": {key: {"file", "sha256"}}}}}
    shard-00003.paths.json      the shard's image paths (manifest order)
    shard-00003.global.npy      (n, Dg) float16        shard-00003.emotional.npy  (n, K, Dl) float16
    shard-00003.object.npy      (n, K, Dl) float16     shard-00003.emotional_boxes.npy (n, K, 4) ...

One ``.npy`` per tensor, so a reader maps the arrays and reads the rows of a batch (``feature_store``) instead
of holding the dataset in memory. Writing is streaming (one shard in memory at a time) and the index is
rewritten atomically after every shard, so an interrupted extraction keeps what it finished; a shard file's bytes
depend on its content only. A shard with a file whose bytes do not match its recorded hash is recomputed by
``missing_shards`` and refused by the readers: a corrupt entry is never used silently.

Sharded extraction: shard ``i`` of ``N`` owns the cache's shard ranges ``k`` with ``k % N == i``
(``shard_ranges_of``); each part is a cache whose index lists only its own ranges (the readers refuse it as
incomplete), and ``merge_caches`` joins the N parts into the cache an unsharded extraction writes, byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from image_emotion.data.safe_paths import inside
from image_emotion.errors import ConfigError, ImageEmotionError
from image_emotion.files import atomic_dir, atomic_path, file_sha256, write_json_atomic

FLOAT_KEYS = ("global", "emotional", "object")  # stored float16, read back as float32
FORMAT = 2  # the layout above; a cache of another format is recomputed


class CacheError(ImageEmotionError):
    """A feature cache that is missing, stale or corrupt."""


CACHE_FIX = "index.json names files of the cache directory itself; delete the cache and run extract-regions again"


def _index_path(cache_dir: Path) -> Path:
    return cache_dir / "index.json"


def cache_file(cache_dir: Path, name: object, what: str) -> Path:
    """``cache_dir / name`` for a file name read from ``index.json``: a plain name (no folder, no ``..``) of a
    file inside the cache directory (``safe_paths.inside``), else a one-line ``CacheError`` naming it."""
    if not isinstance(name, str):
        raise CacheError(f"{what}: file name {name!r} is not a string; {CACHE_FIX}")
    path = inside(cache_dir, name, what, place="the cache directory", fix=CACHE_FIX, error=CacheError)
    if len(PurePosixPath(name).parts) != 1:
        raise CacheError(f"{what}: path {name!r} is not a plain file name of the cache directory; {CACHE_FIX}")
    return path


def read_index(cache_dir: str | Path) -> dict[str, Any] | None:
    """The cache's index, or None when there is none or it is unreadable (then everything is recomputed)."""
    path = _index_path(Path(cache_dir))
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def new_index(fingerprint: str, num_images: int, shard_size: int) -> dict[str, Any]:
    return {"format": FORMAT, "fingerprint": fingerprint, "num_images": num_images, "shard_size": shard_size,
            "shards": {}}  # fmt: skip


def entry_files(entry: dict[str, Any]) -> list[str]:
    """The file names of one index entry (also of an entry of the earlier one-file format, to remove them)."""
    if not isinstance(entry, dict):
        return []
    listed = entry.get("files") if isinstance(entry.get("files"), dict) else {}
    files = [f["file"] for f in listed.values() if isinstance(f, dict) and "file" in f]
    return files + ([entry["file"]] if "file" in entry else [])


def _check_index_files(cache_dir: Path, index: dict[str, Any]) -> None:
    """Every file name of every entry of ``index`` passes ``cache_file`` (before anything is opened or removed)."""
    shards = index.get("shards")
    for sid, entry in shards.items() if isinstance(shards, dict) else ():
        for name in entry_files(entry):
            cache_file(cache_dir, name, f"{_index_path(cache_dir)} shard {sid}")


def shard_ranges(num_images: int, shard_size: int) -> list[tuple[str, int, int]]:
    """``(shard id, start, stop)`` covering ``0..num_images``."""
    return [(f"{i // shard_size:05d}", i, min(i + shard_size, num_images)) for i in range(0, num_images, shard_size)]


def check_shard(shard: int, shards: int) -> None:
    """``shard`` of ``shards`` names a part: ``shards >= 1`` and ``0 <= shard < shards``; ``ConfigError`` if not."""
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ConfigError(f"--shard: the number of shards must be a whole number >= 1, got {shards!r}")
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < shards:
        raise ConfigError(f"--shard: the shard must be a whole number in 0..{shards - 1}, got {shard!r} (of {shards})")


def shard_ranges_of(num_images: int, shard_size: int, shard: int, shards: int) -> list[tuple[str, int, int]]:
    """The ranges of ``shard_ranges`` that shard ``shard`` of ``shards`` owns: dealt round-robin (range ``k`` to
    shard ``k % shards``), so each range belongs to exactly one of the ``shards``."""
    check_shard(shard, shards)
    return shard_ranges(num_images, shard_size)[shard::shards]


def shard_is_valid(cache_dir: Path, entry: dict[str, Any] | None) -> bool:
    """Every file of the shard exists and its bytes hash to the recorded value. A file name that is not a plain
    name inside ``cache_dir`` raises ``CacheError`` (``cache_file``)."""
    files = entry.get("files") if isinstance(entry, dict) else None
    if not isinstance(files, dict) or "paths" not in files or not all(isinstance(f, dict) for f in files.values()):
        return False
    paths = [cache_file(cache_dir, f.get("file"), f"{_index_path(cache_dir)} shard entry") for f in files.values()]
    return all(
        path.is_file() and file_sha256(path) == f.get("sha256") for path, f in zip(paths, files.values(), strict=True)
    )


def missing_shards(
    cache_dir: str | Path, fingerprint: str, num_images: int, shard_size: int, shard: int = 0, shards: int = 1
):
    """The index to continue from and the shard ranges still to compute (stale or corrupt ones included).

    With ``shards > 1`` only the ranges of shard ``shard`` count: entries of other ranges are dropped from the
    index (and their files removed), so a part's cache holds exactly its own ranges."""
    cache_dir = Path(cache_dir)
    owned = shard_ranges_of(num_images, shard_size, shard, shards)
    index = read_index(cache_dir)
    if isinstance(index, dict):
        _check_index_files(cache_dir, index)  # a crafted name raises here, before any file is removed
    else:
        index = None
    if index is not None and index.get("format") != FORMAT:  # another layout: its files go, all is recomputed
        for entry in index.get("shards", {}).values():
            for name in entry_files(entry):
                cache_file(cache_dir, name, f"{_index_path(cache_dir)}").unlink(missing_ok=True)
    if (
        index is None
        or index.get("format") != FORMAT
        or index.get("fingerprint") != fingerprint
        or index.get("num_images") != num_images
        or index.get("shard_size") != shard_size
    ):
        index = new_index(fingerprint, num_images, shard_size)
    owned_ids = {sid for sid, _, _ in owned}
    for sid in sorted(set(index["shards"]) - owned_ids):
        for name in entry_files(index["shards"][sid]):
            cache_file(cache_dir, name, f"{_index_path(cache_dir)} shard {sid}").unlink(missing_ok=True)
        del index["shards"][sid]
    todo = []
    for sid, start, stop in owned:
        entry = index["shards"].get(sid)
        if not shard_is_valid(cache_dir, entry):
            if entry is not None:
                print(f"{cache_dir}: shard {sid}: corrupt or missing cache entry; recomputing it", file=sys.stderr)
                del index["shards"][sid]
            todo.append((sid, start, stop))
    return index, todo


def _write_bytes(path: Path, data: bytes) -> str:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return file_sha256(path)


def write_shard(cache_dir: str | Path, index: dict[str, Any], sid: str, start: int, stop: int, shard: dict) -> None:
    """Write one shard's files atomically (``paths``: a list; every other key: a tensor or array with one row
    per image, ``FLOAT_KEYS`` stored as float16), record their hashes, then rewrite the index atomically."""
    cache_dir = Path(cache_dir)
    files: dict[str, dict[str, str]] = {}
    name = f"shard-{sid}.paths.json"
    files["paths"] = {"file": name, "sha256": _write_bytes(cache_dir / name, json.dumps(list(shard["paths"])).encode())}
    for key, value in sorted(shard.items()):
        if key == "paths":
            continue
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if key in FLOAT_KEYS:
            array = array.astype(np.float16)
        if len(array) != stop - start:
            raise CacheError(f"{cache_dir}: shard {sid}: {key} has {len(array)} rows for {stop - start} images")
        name = f"shard-{sid}.{key}.npy"
        with atomic_path(cache_dir / name) as tmp, tmp.open("wb") as fh:  # header + rows: bytes from content only
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
        files[key] = {"file": name, "sha256": file_sha256(cache_dir / name)}
    index["shards"][sid] = {"start": start, "stop": stop, "files": files}
    write_json_atomic(_index_path(cache_dir), index)


def merge_caches(parts: list[Path], out: Path) -> dict[str, Any]:
    """Join the caches of an extraction's shards (``extract-regions --shard i/N``) into ``out``.

    The parts must share fingerprint, image count and shard size, and hold every shard range exactly once with
    valid hashes; otherwise a one-line ``CacheError`` names the odd part or shard. ``out`` is then a normal
    cache, byte-identical to the unsharded one: shard files hard-linked (copied across filesystems) and the
    index written in shard order; the directory replaces ``out`` in one rename. Returns a summary."""
    parts = [Path(p) for p in parts]
    out = Path(out)
    if not parts:
        raise CacheError("merge-features: no --parts given")
    seen: dict[Path, Path] = {}
    for part in parts:
        key = part.resolve()
        if key == out.resolve():
            raise CacheError(f"{part}: a part cannot also be the merged --features directory")
        if key in seen:
            raise CacheError(f"{part}: the same part is given twice (as {seen[key]} before); give each part once")
        seen[key] = part
    indexes = []
    for part in parts:
        index = read_index(part)
        if index is None or not isinstance(index.get("shards"), dict):
            raise CacheError(f"{part}: no feature cache (index.json missing or unreadable); run its extract-regions")
        indexes.append(index)
    first, ref = parts[0], indexes[0]
    for part, index in zip(parts[1:], indexes[1:], strict=True):
        for key in ("format", "fingerprint", "num_images", "shard_size"):
            if index.get(key) != ref.get(key):
                raise CacheError(
                    f"{part}: {key} {index.get(key)!r} differs from {ref.get(key)!r} of {first}; "
                    "merge parts of one extraction (same detector, manifest and extract.shard_size)"
                )
    ranges = {sid: (start, stop) for sid, start, stop in shard_ranges(ref["num_images"], ref["shard_size"])}
    owner: dict[str, Path] = {}
    entries: dict[str, dict[str, Any]] = {}
    for part, index in zip(parts, indexes, strict=True):
        for sid, entry in sorted(index["shards"].items()):
            if sid not in ranges or (entry.get("start"), entry.get("stop")) != ranges[sid]:
                raise CacheError(f"{part}: shard {sid} does not match the cache's shard ranges; re-run its extraction")
            if sid in owner:
                raise CacheError(f"shard {sid} is in both {owner[sid]} and {part}; merge each shard's part once")
            if not shard_is_valid(part, entry):
                raise CacheError(
                    f"{part}: shard {sid} is missing or corrupt; re-run that part's `image-emotion extract-regions "
                    "--shard` (a part of an earlier cache format is re-run too)"
                )
            owner[sid] = part
            entries[sid] = {k: entry[k] for k in ("start", "stop", "files")}
    missing = [sid for sid in ranges if sid not in owner]
    if missing:
        sid = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CacheError(
            f"shard {sid} (images {ranges[sid][0]}..{ranges[sid][1] - 1}){more} is in none of the {len(parts)} "
            "parts; run the missing `extract-regions --shard i/N` and merge again"
        )
    index = new_index(ref["fingerprint"], ref["num_images"], ref["shard_size"])
    with atomic_dir(out) as tmp:
        for sid in sorted(entries):
            entry = entries[sid]
            for file in entry["files"].values():
                where = f"{_index_path(owner[sid])} shard {sid}"
                src, dst = cache_file(owner[sid], file["file"], where), cache_file(tmp, file["file"], where)
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copyfile(src, dst)
                if file_sha256(dst) != file["sha256"]:  # the part changed while merging
                    raise CacheError(f"{src}: changed while merging; merge again")
            index["shards"][sid] = entry
        write_json_atomic(_index_path(tmp), index)
    return {"features": str(out), "parts": len(parts), "shards": len(entries), "images": ref["num_images"]}
