"""Reading a feature cache without holding it in memory: a batch's rows read from the shard files on demand.

``FeatureStore(cache_dir)`` checks every shard file's hash once, reads each ``.npy`` header (shape, dtype, where
row 0 starts) and keeps only the image paths in memory; ``rows(index)`` reads the rows of any images (in the
order asked) with one ``pread`` per row and array into a fresh batch, as float32 tensors. Nothing is mapped: the
file pages stay in the kernel's page cache (evicted under pressure), never in the process, so a reader's resident
memory is one batch of features, not the dataset. (Memory-mapping was measured first: the kernel maps whole
large folios around each touched row, 75 MB for one 128-row batch of a 155 MB cache, and releasing them with
``madvise`` cost 3 ms a batch.) ``FeatureRows`` is a lazy selection of a store's rows (what ``heads.HeadData``
holds); ``load_cache`` reads every row at once, for small caches and tests.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from image_emotion.training.feature_cache import FLOAT_KEYS, CacheError, read_index, shard_is_valid, shard_ranges

MAX_OPEN_FILES = 256  # shard files a store keeps open at once (least recently used ones are closed)


@dataclass(frozen=True)
class _Array:
    """One ``.npy`` file's layout: its rows start at ``offset``, each ``row_bytes`` long."""

    path: Path
    offset: int
    rows: int
    row_shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.row_shape))


def _layout(path: Path) -> _Array:
    with path.open("rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if fortran or dtype.hasobject:
            raise ValueError("not a C-ordered array of numbers")
        return _Array(path, fh.tell(), shape[0], tuple(shape[1:]), dtype)


class FeatureStore:
    """A complete feature cache, read row by row. ``shapes[key]``: one image's shape of each tensor key."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)
        index = read_index(self.cache_dir)
        if index is None:
            raise CacheError(f"{self.cache_dir}: no feature cache; run `image-emotion extract-regions` first")
        self.fingerprint: str = index["fingerprint"]
        self.num_images: int = index["num_images"]
        self._arrays: list[dict[str, _Array]] = []
        self.paths: list[str] = []
        starts = []
        for sid, start, stop in shard_ranges(index["num_images"], index["shard_size"]):
            entry = index["shards"].get(sid)
            if not shard_is_valid(self.cache_dir, entry):
                raise CacheError(
                    f"{self.cache_dir}: shard {sid} is missing or corrupt; re-run `image-emotion extract-regions`"
                )
            files = {key: self.cache_dir / f["file"] for key, f in entry["files"].items()}
            try:
                self.paths += json.loads(files.pop("paths").read_text())
                arrays = {key: _layout(path) for key, path in files.items()}
            except (OSError, ValueError) as exc:
                raise CacheError(
                    f"{self.cache_dir}: shard {sid} cannot be read ({type(exc).__name__}); re-run extract-regions"
                ) from None
            if any(a.rows != stop - start for a in arrays.values()):
                raise CacheError(f"{self.cache_dir}: shard {sid} holds other than {stop - start} rows; re-run it")
            self._arrays.append(arrays)
            starts.append(start)
        if len(self.paths) != self.num_images:
            raise CacheError(f"{self.cache_dir}: {len(self.paths)} paths for {self.num_images} images; re-run it")
        self._starts = np.asarray(starts, dtype=np.int64)
        first = self._arrays[0] if self._arrays else {}
        self.shapes: dict[str, tuple[int, ...]] = {key: a.row_shape for key, a in first.items()}
        self._dtypes = {key: a.dtype for key, a in first.items()}
        for sid, arrays in zip(sorted(index["shards"]), self._arrays, strict=True):
            if {k: (a.row_shape, a.dtype) for k, a in arrays.items()} != {
                k: (self.shapes[k], self._dtypes[k]) for k in self.shapes
            }:
                raise CacheError(f"{self.cache_dir}: shard {sid} holds other tensors than shard 00000; re-run it")
        # by key, per shard: the file and where its row 0 starts (what ``rows`` needs, computed once)
        self._paths_of = {key: [arrays[key].path for arrays in self._arrays] for key in self.shapes}
        self._offsets = {key: np.array([arrays[key].offset for arrays in self._arrays]) for key in self.shapes}
        self._row_bytes = {key: first[key].row_bytes for key in self.shapes}
        self._open: OrderedDict[Path, int] = OrderedDict()
        self.largest_read = 0  # the most rows one ``rows`` call has read: what a reader holds at once

    def __len__(self) -> int:
        return self.num_images

    def _fd(self, path: Path) -> int:
        fd = self._open.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            if len(self._open) >= MAX_OPEN_FILES:
                os.close(self._open.popitem(last=False)[1])
        self._open[path] = fd
        return fd

    def rows(self, index: Tensor | np.ndarray | list[int], keys: tuple[str, ...] | None = None) -> dict[str, Tensor]:
        """Rows ``index`` (in that order) of each of ``keys`` (default: all): ``(len(index), *shapes[key])``,
        float32 for ``FLOAT_KEYS``."""
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.num_images):
            raise IndexError(f"{self.cache_dir}: rows {idx.min()}..{idx.max()} of {self.num_images} images")
        keys = tuple(self.shapes) if keys is None else keys
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        out = {key: np.empty((len(idx), *self.shapes[key]), dtype=self._dtypes[key]) for key in keys}
        local = idx - self._starts[shard]
        for key in keys if len(idx) else ():
            target = out[key].reshape(len(idx), -1).view(np.uint8)  # (B, row bytes): one writable buffer a row
            paths, row_bytes = self._paths_of[key], self._row_bytes[key]
            fd_of = {s: self._fd(paths[s]) for s in np.unique(shard).tolist()}
            offsets = self._offsets[key][shard] + local * row_bytes
            for j, (s, offset) in enumerate(zip(shard.tolist(), offsets.tolist(), strict=True)):
                if os.preadv(fd_of[s], [target[j]], offset) != row_bytes:
                    raise CacheError(f"{paths[s]}: truncated; re-run `image-emotion extract-regions`")
        self.largest_read = max(self.largest_read, len(idx))
        return {
            key: torch.from_numpy(value).float() if key in FLOAT_KEYS else torch.from_numpy(value)
            for key, value in out.items()
        }

    def close(self) -> None:
        """Close the shard files this store holds open (it reopens them when read again)."""
        while self._open:
            os.close(self._open.popitem()[1])

    def __del__(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # a store that failed in __init__ has no files open
            self.close()

    def all(self) -> FeatureRows:
        """Every row, lazily."""
        return FeatureRows(self, np.arange(self.num_images))


class FeatureRows:
    """Rows ``index`` of a ``FeatureStore`` (``len(index)`` images), read only by ``load``."""

    def __init__(self, store: FeatureStore, index: np.ndarray) -> None:
        self.store = store
        self.index = np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def select(self, index: Tensor | np.ndarray) -> FeatureRows:
        return FeatureRows(self.store, self.index[np.asarray(index, dtype=np.int64)])

    def load(self, keys: tuple[str, ...] | None = None) -> dict[str, Tensor]:
        return self.store.rows(self.index, keys)


def load_cache(cache_dir: str | Path) -> dict[str, Any]:
    """The whole cache in memory (features float32), after checking every hash; raises ``CacheError``."""
    store = FeatureStore(cache_dir)
    out = {"paths": list(store.paths), **store.all().load(), "fingerprint": store.fingerprint}
    store.close()
    return out
