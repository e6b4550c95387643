"""Reading a feature cache without holding it in memory: the arrays memory-mapped, a batch's rows read on demand.

``FeatureStore(cache_dir)`` checks every shard file's hash once, maps each shard's ``.npy`` arrays and keeps
only the image paths in memory; ``rows(index)`` gathers the rows of any images (in the order asked) as float32
tensors, then drops the pages it touched from the process (``madvise(MADV_DONTNEED)``: they stay in the page
cache, the kernel's to evict), so a reader's resident memory is one batch of features, not the dataset.
``FeatureRows`` is a lazy selection of a store's rows (what ``heads.HeadData`` holds): selecting is index
arithmetic, reading happens batch by batch. ``load_cache`` reads every row at once, for small caches and tests.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from image_emotion.training.feature_cache import FLOAT_KEYS, CacheError, read_index, shard_is_valid, shard_ranges


class FeatureStore:
    """A complete feature cache, memory-mapped. ``shapes[key]``: one image's shape of each tensor key."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)
        index = read_index(self.cache_dir)
        if index is None:
            raise CacheError(f"{self.cache_dir}: no feature cache; run `image-emotion extract-regions` first")
        self.fingerprint: str = index["fingerprint"]
        self.num_images: int = index["num_images"]
        self._maps: list[dict[str, np.ndarray]] = []
        self.paths: list[str] = []
        starts = []
        for sid, start, _ in shard_ranges(index["num_images"], index["shard_size"]):
            entry = index["shards"].get(sid)
            if not shard_is_valid(self.cache_dir, entry):
                raise CacheError(
                    f"{self.cache_dir}: shard {sid} is missing or corrupt; re-run `image-emotion extract-regions`"
                )
            files = {key: self.cache_dir / f["file"] for key, f in entry["files"].items()}
            try:
                self.paths += json.loads(files.pop("paths").read_text())
                self._maps.append({k: np.load(path, mmap_mode="r", allow_pickle=False) for k, path in files.items()})
            except (OSError, ValueError) as exc:
                raise CacheError(
                    f"{self.cache_dir}: shard {sid} cannot be read ({type(exc).__name__}); re-run extract-regions"
                ) from None
            starts.append(start)
        if len(self.paths) != self.num_images:
            raise CacheError(f"{self.cache_dir}: {len(self.paths)} paths for {self.num_images} images; re-run it")
        self._starts = np.asarray(starts, dtype=np.int64)
        first = self._maps[0] if self._maps else {}
        self.shapes: dict[str, tuple[int, ...]] = {key: tuple(a.shape[1:]) for key, a in first.items()}
        self._dtypes = {key: a.dtype for key, a in first.items()}
        self.largest_read = 0  # the most rows one ``rows`` call has read: what a reader holds at once

    def __len__(self) -> int:
        return self.num_images

    def rows(self, index: Tensor | np.ndarray | list[int], keys: tuple[str, ...] | None = None) -> dict[str, Tensor]:
        """Rows ``index`` (in that order) of each of ``keys`` (default: all): ``(len(index), *shapes[key])``,
        float32 for ``FLOAT_KEYS``; the mapped pages are released afterwards."""
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.num_images):
            raise IndexError(f"{self.cache_dir}: rows {idx.min()}..{idx.max()} of {self.num_images} images")
        keys = tuple(self.shapes) if keys is None else keys
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        out = {key: np.empty((len(idx), *self.shapes[key]), dtype=self._dtypes[key]) for key in keys}
        for s in np.unique(shard):
            where = np.flatnonzero(shard == s)
            local = idx[where] - self._starts[s]
            for key in keys:
                array = self._maps[s][key]
                out[key][where] = array[local]
                _release(array)
        self.largest_read = max(self.largest_read, len(idx))
        return {
            key: torch.from_numpy(value).float() if key in FLOAT_KEYS else torch.from_numpy(value)
            for key, value in out.items()
        }

    def all(self) -> FeatureRows:
        """Every row, lazily."""
        return FeatureRows(self, np.arange(self.num_images))


def _release(array: np.ndarray) -> None:
    """Unmap the pages of ``array``'s file this process touched (they stay in the page cache)."""
    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_DONTNEED"):
        handle.madvise(mmap.MADV_DONTNEED)


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
    return {"paths": list(store.paths), **store.all().load(), "fingerprint": store.fingerprint}
