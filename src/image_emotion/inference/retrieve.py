"""Seed 002's model on query images: each query's predicted emotion and the images nearest to it in feeling,
from the model's saved index or from a folder embedded now."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from image_emotion.errors import ImageEmotionError
from image_emotion.inference.inputs import decode, image_files


@dataclass(frozen=True)
class Neighbour:
    rank: int  # 1: the nearest
    id: str  # the image's path (as the index names it)
    label: str | None  # the index's label: the true one (a saved index) or the predicted one (a folder)
    distance: float


@dataclass(frozen=True)
class Answer:
    """One query's predicted emotion and its neighbours, nearest first."""

    label: str
    polarity: str | None
    neighbours: list[Neighbour]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def index_of_folder(directory: Path, predictor: Any) -> Any:
    """An exact ``EmbeddingIndex`` of every decodable image under ``directory`` (labels: the model's predictions;
    a bad file is skipped with a warning on stderr)."""
    from image_emotion.retrieval import EmbeddingIndex

    if not directory.is_dir():
        raise ImageEmotionError(f"{directory}: --collection is not a directory")
    files = image_files(directory)
    ids, features, classes = [], [], []
    chunk = max(predictor.batch_size, 64)
    for start in range(0, len(files), chunk):
        decoded, failures = decode(files[start : start + chunk])
        for path, why in failures.items():
            print(f"warning: skipped {path}: {why}", file=sys.stderr)
        if decoded:
            f, c = predictor.embed_and_classify(list(decoded.values()))
            ids += [str(p) for p in decoded]
            features.append(f)
            classes.append(c)
    if not ids:
        raise ImageEmotionError(f"{directory}: no decodable image files (jpg, png, ...) under it")
    return EmbeddingIndex(np.concatenate(features), ids, np.concatenate(classes).tolist(), kind="exact")


def retrieve(queries: list[Image.Image], predictor: Any, k: int = 5, collection: Path | None = None) -> list[Answer]:
    """One ``Answer`` a query: the ``k`` nearest images of the model's index, or of the images under
    ``collection``. ``predictor``: ``tracking.retrieval_pyfunc.RetrievalPredictor``."""
    index = index_of_folder(collection, predictor) if collection is not None else None
    answers = predictor.query(queries, k, index=index) if queries else []
    return [
        Answer(
            a["label"],
            a["polarity"],
            [Neighbour(n["rank"], n["id"], n["label"], n["distance"]) for n in a["neighbours"]],
        )
        for a in answers
    ]
