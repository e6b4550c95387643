"""Stage ``retrieve`` (CLI ``build-index``, seed 002): the retrieval index of the main set and the paper's measures.

- Index: every image of the main set embedded with the trained model's retrieval feature (the sentiment vector
  by default), saved as an ``EmbeddingIndex`` (exact below ``retrieve.exact_below`` images, faiss HNSW above) in
  ``models/retrieval``; ids are the image paths, labels the class ids. ``image-emotion retrieve`` and the
  registered model search it.
- Measures (``metrics/retrieval.json``): the paper's FI protocol on the main set (test queries against the
  train split): accuracy, NN, FT, ST, mAP8, mAP2, DCG, ANMRR; and Table 1's rows from ``train_metric``, so the
  report reads one file (the small sets' protocol is ``retrieve_transfer``).
- Figures (``plots_retrieval/``): ``tsne.png`` / ``tsne.csv`` of the test embeddings (Fig. 4) and ``queries.png``,
  a few test queries with their top-k train images (Fig. 5).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from image_emotion.config import Config
from image_emotion.data.emotions import get_label_set
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.device import pick_device
from image_emotion.figures import query_grid, relevance, tsne_coordinates, tsne_plot
from image_emotion.files import write_json_atomic, write_text_atomic
from image_emotion.models.metric import load_metric_model
from image_emotion.retrieval import EmbeddingIndex
from image_emotion.stages.paths import RetrievePaths
from image_emotion.tracking import runs as tracking
from image_emotion.training.metric import RETRIEVAL_MEASURES, embed_prepared, score


def grid_queries(labels: np.ndarray, test: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` test rows, the first test image of each class in class order, then further ones."""
    firsts = [int(test[labels[test] == c][0]) for c in np.unique(labels[test])]
    rest = [int(i) for i in test if int(i) not in firsts]
    return (firsts + rest)[:count]


def write_figures(
    out: dict[str, np.ndarray], feature: str, data: PreparedDataset, idx: dict[str, np.ndarray], k: int,
    count: int, plots: Path,
) -> None:  # fmt: skip
    """``tsne.csv`` / ``tsne.png`` of the test embeddings and ``queries.png`` (test queries, train gallery)."""
    names = get_label_set(data.label_set).labels
    labels = data.labels().numpy()
    test, train = idx["test"], idx["train"]
    xy = tsne_coordinates(out[feature][test])
    rows = [{"x": f"{x:.4f}", "y": f"{y:.4f}", "label": names[labels[i]]} for (x, y), i in zip(xy, test, strict=True)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["x", "y", "label"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(plots / "tsne.csv", buf.getvalue())
    tsne_plot(xy, [r["label"] for r in rows], names, f"t-SNE of the test images' {feature} vectors", plots / "tsne.png")
    gallery = EmbeddingIndex(out[feature][train], [str(i) for i in train], kind="exact")
    grid = []
    for q in grid_queries(labels, test, count):
        distances, positions = gallery.search(out[feature][q], k)
        hits = train[positions[0]]
        grid.append(
            {
                "query": data.root / data.manifest["path"].iloc[q],
                "label": names[labels[q]],
                "neighbours": [
                    {
                        "id": data.root / data.manifest["path"].iloc[h],
                        "label": names[labels[h]],
                        "distance": float(d),
                        "relevance": relevance(names[labels[q]], names[labels[h]], data.label_set),
                    }
                    for h, d in zip(hits, distances[0], strict=True)
                ],
            }
        )
    query_grid(grid, plots / "queries.png")


def run(config: Config, paths: RetrievePaths) -> dict[str, Any]:
    """The stage: index, measures, figures, MLflow."""
    model, state = load_metric_model(paths.model)
    model.to(pick_device(config.device))
    feature = state["retrieval_feature"]
    data = PreparedDataset.load(paths.prepared)
    idx = {s: data.split_rows(s) for s in ("train", "val", "test")}
    labels = data.labels().numpy()
    out = embed_prepared(model, state, data)
    main = {
        "protocol": "test queries against the train split",
        **score(out, labels, idx["test"], idx["train"], feature, data.label_set),
    }
    validation = {  # what promotion compares (test is only reported)
        "protocol": "validation queries against the train split",
        **score(out, labels, idx["val"], idx["train"], feature, data.label_set),
    }
    index = EmbeddingIndex(
        out[feature],
        [os.path.normpath(data.root / p) for p in data.manifest["path"]],  # paths as the user would type them
        labels.tolist(),
        kind=config.retrieve.index,
        exact_below=config.retrieve.exact_below,
        ef_search=config.retrieve.ef_search,
    )
    ablation = json.loads(paths.ablation.read_text()) if paths.ablation.is_file() else []
    result = {
        "dataset": data.name,
        "label_set": data.label_set,
        "backbone": model.backbone_name,
        "image_size": state["image_size"],
        "feature": feature,
        "dimension": int(out[feature].shape[1]),
        "index_kind": index.kind,
        "gallery_size": len(idx["train"]),
        "collection_size": len(index),
        "main": main,
        "validation": validation,
        "ablation": ablation,
    }
    write_figures(out, feature, data, idx, config.retrieve.k, config.retrieve.grid_queries, paths.plots)
    index.save(paths.index)
    with tracking.stage_run(config, "retrieve", paths.reads) as mlflow:
        tracking.log_metrics({f"test_{k}": main[k] for k in ("accuracy", *RETRIEVAL_MEASURES)})
        mlflow.log_artifacts(str(paths.plots), artifact_path="plots_retrieval")
        mlflow.log_artifacts(str(paths.index), artifact_path="index")
    write_json_atomic(paths.metrics, result)
    return {"index": str(paths.index), "index_kind": index.kind, "test_map8": main["map8"], "test_map2": main["map2"]}
