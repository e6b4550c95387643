"""The metric-learning network's inputs without holding a dataset in memory.

- ``ImageRows``: the images of a prepared dataset as model inputs ``(N, 3, S, S)``, decoded and resized when a
  batch is indexed (``rows[index]`` -> a tensor); ``select`` narrows it to some images without reading any.
- ``StreamedTrunk``: a frozen backbone's maps of every image computed once, as ``metric.TrunkCache`` does, but
  written to a feature cache on disk (``feature_cache.write_shard``, float32: the same numbers) and read back a
  mini-batch at a time through ``FeatureStore``; ``batch`` and ``subset`` behave like
  ``TrunkCache``'s, so training and embedding accept either.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from image_emotion.data.torch_data import PreparedDataset, preprocess
from image_emotion.training.feature_cache import new_index, shard_ranges, write_shard
from image_emotion.training.feature_store import FeatureStore

TRUNK_SHARD = 64  # images per trunk-cache shard: ~30 MB of maps at 128 px, built in memory before written


class ImageRows:
    """Images ``rows`` of ``data`` (default: all), ``size × size`` and normalised when indexed."""

    def __init__(
        self,
        data: PreparedDataset,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        rows: np.ndarray | None = None,
    ) -> None:
        self.data, self.size, self.mean, self.std = data, size, tuple(mean), tuple(std)
        self.rows = np.arange(len(data.manifest)) if rows is None else np.asarray(rows, dtype=np.int64)
        self._paths = data.manifest["path"].to_numpy()

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, index: Tensor | np.ndarray | Sequence[int]) -> ImageRows:
        """These images' ``index``-th ones, read later."""
        return ImageRows(self.data, self.size, self.mean, self.std, self.rows[np.asarray(index, dtype=np.int64)])

    def __getitem__(self, index: Tensor | np.ndarray | slice | Sequence[int]) -> Tensor:
        """The images at ``index`` (positions in these rows) decoded: ``(B, 3, size, size)``."""
        picked = self.rows[index] if isinstance(index, slice) else self.rows[np.asarray(index, dtype=np.int64)]
        out = torch.empty(len(picked), 3, self.size, self.size)
        for i, row in enumerate(np.atleast_1d(picked)):
            out[i] = preprocess(self.data.image(self._paths[row]), self.size, self.mean, self.std)
        return out


class StreamedTrunk:
    """A frozen backbone's outputs for every image of ``images``, on disk under ``directory``: ``batch(index)``
    gives ``([maps (B, C_l, H_l, W_l)], pooled (B, F))`` on the model's device."""

    def __init__(self, model, images: ImageRows | Tensor, directory: Path, batch_size: int = 64) -> None:
        model.backbone.eval()
        self.device = next(model.parameters()).device
        n = len(images)
        index = new_index("trunk", n, TRUNK_SHARD)
        with torch.no_grad():
            for sid, start, stop in shard_ranges(n, TRUNK_SHARD):
                parts: list[dict[str, Tensor]] = []
                for first in range(start, stop, batch_size):
                    maps, pooled = model.trunk(images[first : min(first + batch_size, stop)].to(self.device))
                    parts.append({**{f"map{i}": m.cpu() for i, m in enumerate(maps)}, "pooled": pooled.cpu()})
                shard = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
                shard["paths"] = [str(i) for i in range(start, stop)]  # the rows: a trunk cache has no file names
                write_shard(directory, index, sid, start, stop, shard)
        self.store = FeatureStore(directory)
        self.levels = sum(key.startswith("map") for key in self.store.shapes)
        self.rows = np.arange(n)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, index: Tensor | np.ndarray) -> tuple[list[Tensor], Tensor]:
        read = self.store.rows(self.rows[np.asarray(index, dtype=np.int64)])
        maps = [read[f"map{i}"].to(self.device) for i in range(self.levels)]
        return maps, read["pooled"].to(self.device)

    def subset(self, index: Tensor | np.ndarray) -> StreamedTrunk:
        """The images at ``index`` (e.g. the train split), reading from the same files."""
        out = StreamedTrunk.__new__(StreamedTrunk)
        out.device, out.store, out.levels = self.device, self.store, self.levels
        out.rows = self.rows[np.asarray(index, dtype=np.int64)]
        return out
