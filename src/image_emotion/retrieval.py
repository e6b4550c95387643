"""The embedding index of affective image retrieval (seed 002): exact search for small collections, faiss for
large ones, saved as one directory (an artifact that DVC and MLflow can carry).

``EmbeddingIndex(embeddings (N, D), ids)`` answers ``search(queries (Q, D), k)`` with the ``k`` nearest items by
Euclidean distance, nearest first, as ``(distances (Q, k), positions (Q, k))``; ``ids[position]`` names the item
(an image path). ``kind``:

- ``exact``: brute force in numpy, the same order as ``metrics.rank_gallery`` (equal distances keep the lower
  position first), so retrieval measures and the served answers agree;
- ``hnsw``: faiss's HNSW graph (``IndexHNSWFlat``, M = 32): approximate, sub-linear, for collections of hundreds
  of thousands of images. Its search width ``ef_search`` is fixed with the index (``retrieve.ef_search``, saved in
  ``index.json``) and passed with each search (faiss's per-call parameters), never set on the shared index, so
  concurrent queries cannot change each other's; a query's ``k`` above it widens only its own search. Places
  faiss leaves unfilled (``-1``: fewer than ``k`` reachable) are dropped, never read as the last item;
- ``auto``: exact below ``exact_below`` items, HNSW from there.

Layout of a saved index: ``index.json`` (kind, dimension, ids, labels), ``embeddings.npy`` (float32) and, for
HNSW, ``faiss.index``. Writing is atomic (the directory appears complete or not at all).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from image_emotion.config import RetrieveConfig
from image_emotion.errors import ConfigError
from image_emotion.files import atomic_dir
from image_emotion.metrics import rank_gallery

KINDS = ("auto", "exact", "hnsw")
EXACT_BELOW = 50_000  # items: below this, brute force answers in milliseconds and is exact
HNSW_M = 32
EF_SEARCH = RetrieveConfig.model_fields["ef_search"].default


class EmbeddingIndex:
    """Nearest neighbours of query embeddings among ``embeddings (N, D)`` named by ``ids`` (N,)."""

    def __init__(
        self,
        embeddings: np.ndarray,
        ids: list[str],
        labels: list[int] | None = None,
        kind: str = "auto",
        exact_below: int = EXACT_BELOW,
        ef_search: int = EF_SEARCH,
    ) -> None:
        vectors = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ConfigError(f"an index needs embeddings of shape (N, D) with N >= 1, got {vectors.shape}")
        if len(ids) != len(vectors) or (labels is not None and len(labels) != len(vectors)):
            raise ConfigError(
                f"an index needs one id (and label) per embedding: {len(vectors)} embeddings, {len(ids)} ids"
            )
        if kind not in KINDS:
            raise ConfigError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
        self.embeddings, self.ids = vectors, list(ids)
        self.labels = None if labels is None else [int(x) for x in labels]
        self.kind = ("exact" if len(vectors) < exact_below else "hnsw") if kind == "auto" else kind
        self.ef_search = int(ef_search)
        self._faiss = self._build_hnsw(vectors) if self.kind == "hnsw" else None

    @staticmethod
    def _build_hnsw(vectors: np.ndarray) -> Any:
        import faiss

        index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_M)
        index.add(vectors)
        return index

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items of each query ``(Q, D)``: Euclidean distances ``(Q, k)`` and positions ``(Q, k)``,
        nearest first (``k`` is capped at the collection's size). HNSW may find fewer than ``k`` for a query: its
        rows are then padded with distance ``inf`` and position ``-1``, which callers skip."""
        q = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        if q.shape[1] != self.embeddings.shape[1]:
            raise ConfigError(f"queries have dimension {q.shape[1]}, the index {self.embeddings.shape[1]}")
        k = min(int(k), len(self))
        if self._faiss is not None:
            import faiss

            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
            squared, positions = self._faiss.search(q, k, params=params)
            positions = positions.astype(np.int64)
            distances = np.where(positions >= 0, np.sqrt(np.maximum(squared, 0.0)), np.inf)
            return distances, positions
        positions = rank_gallery(q, self.embeddings)[:, :k]
        diff = q[:, None, :].astype(np.float64) - self.embeddings[positions].astype(np.float64)
        return np.sqrt((diff**2).sum(-1)), positions

    def save(self, directory: str | Path) -> Path:
        """Write the index to ``directory`` atomically; returns it."""
        with atomic_dir(directory) as tmp:
            meta = {
                "kind": self.kind,
                "dimension": int(self.embeddings.shape[1]),
                "ids": self.ids,
                "labels": self.labels,
                "ef_search": self.ef_search,
            }
            (tmp / "index.json").write_text(json.dumps(meta), encoding="utf-8")
            np.save(tmp / "embeddings.npy", self.embeddings)
            if self._faiss is not None:
                import faiss

                faiss.write_index(self._faiss, str(tmp / "faiss.index"))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> EmbeddingIndex:
        """Read an index written by :meth:`save`; a missing or unreadable part is named."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / "index.json").read_text(encoding="utf-8"))
            embeddings = np.load(directory / "embeddings.npy")
        except (OSError, ValueError, json.JSONDecodeError) as exc:
            raise ConfigError(
                f"{directory}: not a readable embedding index ({exc}); rebuild it with `retrieve`"
            ) from None
        index = cls.__new__(cls)
        index.embeddings, index.ids, index.labels, index.kind = embeddings, meta["ids"], meta["labels"], meta["kind"]
        index.ef_search = int(meta.get("ef_search", EF_SEARCH))  # indexes saved before it was stored: the default
        index._faiss = None
        if index.kind == "hnsw":
            import faiss

            path = directory / "faiss.index"
            if not path.is_file():
                raise ConfigError(f"{path}: not found; the HNSW index is incomplete, rebuild it with `retrieve`")
            index._faiss = faiss.read_index(str(path))
        return index
