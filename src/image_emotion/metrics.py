"""Classification metrics (accuracy, per-class accuracy, confusion matrix, 8 -> 2 polarity accuracy) and the
affective-image-retrieval measures of seed 002 (NN, FT, ST, mAP8/mAP2, DCG, ANMRR)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from image_emotion.data.emotions import get_label_set
from image_emotion.errors import ConfigError


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts ``(C, C)``: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return cm


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Share of exact matches; 0.0 for no samples."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return float((t == p).mean()) if len(t) else 0.0


def per_class_accuracy(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Recall of each class ``(C,)``; NaN for classes without samples."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def polarity_accuracy(y_true: Sequence[int], y_pred: Sequence[int], label_set: str = "mikels8") -> float:
    """Accuracy after mapping both true and predicted classes to positive/negative (the paper's 8 -> 2)."""
    pol = get_label_set(label_set).polarity_ids()
    if (pol < 0).any():
        raise ConfigError(f"{label_set} has labels without polarity; 2-class accuracy needs every label to have one")
    return accuracy(pol[np.asarray(y_true, dtype=int)], pol[np.asarray(y_pred, dtype=int)])


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], label_set: str) -> dict:
    """Every metric above in one JSON-ready dict (per-class keyed by label)."""
    labels = get_label_set(label_set)
    n = len(labels)
    report = {
        "accuracy": accuracy(y_true, y_pred),
        "per_class_accuracy": {
            label: (None if np.isnan(a) else float(a))
            for label, a in zip(labels.labels, per_class_accuracy(y_true, y_pred, n), strict=True)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, n).tolist(),
        "num_samples": len(y_true),
    }
    if label_set in ("mikels8", "ekman6"):
        report["polarity_accuracy"] = polarity_accuracy(y_true, y_pred, label_set)
    return report


# ---------------------------------------------------------------------------------------------------------------
# Affective image retrieval (seed 002, "Evaluation", lines 480-493 and 717-719 of the seed text).
#
# The paper names the measures but gives no formulas; it follows Zhao et al. 2014b (multi-graph learning), which
# takes them from 3D shape retrieval (Shilane et al. 2004, Princeton Shape Benchmark: NN, FT, ST, DCG) and MPEG-7
# (ANMRR). Conventions used below, for one query with ranked relevance rel_1..rel_n and R relevant items in the
# gallery (the query itself excluded under leave-one-out):
#   NN   = rel_1                                         (line 484: "precision of the first returned result")
#   FT   = sum(rel_1..rel_R) / R                         (lines 485-487: "recall of the top m ... where m is the
#   ST   = sum(rel_1..rel_2R) / R                         number of the relevant images in the whole dataset")
#   AP   = (1/R) * sum_{k: rel_k} precision@k            (lines 488-490: mAP8 same emotion, mAP2 same polarity)
#   DCG  = DCG_n / (1 + sum_{j=2..R} 1/log2 j), DCG_1 = rel_1, DCG_i = DCG_{i-1} + rel_i/log2 i  (PSB, line 490)
#   ANMRR: MPEG-7, K = min(4 NG, 2 GTM), rank 1.25 K beyond K  (line 492; lower is better, line 719)
# All range over [0, 1] (line 717). Queries with R = 0 are skipped by every measure (NN included, so that all
# measures average over the same queries); the mean over no query is NaN.
# ---------------------------------------------------------------------------------------------------------------

RETRIEVAL_METRICS = ("euclidean", "cosine")


def _distances(query_emb: np.ndarray, gallery_emb: np.ndarray, metric: str) -> np.ndarray:
    """Distances ``(Q, N)``: squared Euclidean (same order as Euclidean) or ``1 - cosine similarity``."""
    q = np.asarray(query_emb, dtype=np.float64)
    g = np.asarray(gallery_emb, dtype=np.float64)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"embeddings must be (Q, D) and (N, D) with the same D, got {q.shape} and {g.shape}")
    if metric == "euclidean":
        return (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * q @ g.T
    if metric == "cosine":
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        return 1.0 - qn @ gn.T
    raise ConfigError(f"unknown retrieval metric {metric!r}; expected one of {', '.join(RETRIEVAL_METRICS)}")


def _rank(query_emb: np.ndarray, gallery_emb: np.ndarray, metric: str, self_index: np.ndarray | None) -> np.ndarray:
    """Stable ranking ``(Q, N)``; with ``self_index`` ``(Q,)`` that gallery index is dropped from each row."""
    ranked = np.argsort(_distances(query_emb, gallery_emb, metric), axis=1, kind="stable")
    if self_index is None:
        return ranked
    keep = ranked != np.asarray(self_index)[:, None]
    return ranked[keep].reshape(len(ranked), ranked.shape[1] - 1)


def rank_gallery(
    query_emb: np.ndarray, gallery_emb: np.ndarray, metric: str = "euclidean", exclude_self: bool = False
) -> np.ndarray:
    """Gallery indices ``(Q, N)`` of each query ``(Q, D)`` against the gallery ``(N, D)``, nearest first.

    ``metric`` is ``"euclidean"`` or ``"cosine"`` (``1 - cosine similarity``). Equal distances keep the lower
    gallery index first (stable sort). ``exclude_self=True`` is the leave-one-out protocol of the small sets
    (query set == gallery set, ``Q == N``): row ``q`` omits index ``q``, so the result is ``(Q, N - 1)``.
    """
    if not exclude_self:
        return _rank(query_emb, gallery_emb, metric, None)
    if len(query_emb) != len(gallery_emb):
        raise ValueError(
            f"exclude_self needs the query set to be the gallery, got {len(query_emb)} != {len(gallery_emb)}"
        )
    return _rank(query_emb, gallery_emb, metric, np.arange(len(query_emb)))


def _relevance(relevant: np.ndarray, n_relevant: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Boolean ``(Q, n)`` relevance and int ``(Q,)`` totals (row sums when ``n_relevant`` is None)."""
    rel = np.asarray(relevant, dtype=bool)
    if rel.ndim != 2:
        raise ValueError(f"relevant must be (Q, N_ranked), got shape {rel.shape}")
    found = rel.sum(1)
    total = found if n_relevant is None else np.asarray(n_relevant, dtype=np.int64).reshape(-1)
    if total.shape != found.shape or np.any(total < found):
        raise ValueError("n_relevant must be (Q,) and at least the relevant items in each ranked row")
    return rel, total


def _mean_over_answerable(values: np.ndarray, total: np.ndarray) -> float:
    """Mean of ``values`` over the queries with at least one relevant item; NaN when there is none."""
    ok = total > 0
    return float(values[ok].mean()) if ok.any() else float("nan")


def _top_recall(rel: np.ndarray, total: np.ndarray, factor: int) -> np.ndarray:
    """Per query: relevant items among the top ``factor * R`` divided by ``R`` (0 where R = 0)."""
    csum = np.concatenate([np.zeros((len(rel), 1), dtype=np.int64), np.cumsum(rel, axis=1)], axis=1)
    cut = np.minimum(factor * total, rel.shape[1])
    hits = csum[np.arange(len(rel)), cut]
    return hits / np.maximum(total, 1)


def _nn_per_query(rel: np.ndarray) -> np.ndarray:
    return rel[:, 0].astype(np.float64) if rel.shape[1] else np.zeros(len(rel))


def nearest_neighbor(relevant: np.ndarray, n_relevant: np.ndarray | None = None) -> float:
    """NN: share of queries whose first returned item is relevant. ``relevant`` ``(Q, N_ranked)`` in ranked order.

    ``n_relevant`` ``(Q,)``: relevant items in the whole gallery (default: row sums, i.e. the ranking is complete);
    queries with none are skipped.
    """
    rel, total = _relevance(relevant, n_relevant)
    return _mean_over_answerable(_nn_per_query(rel), total)


def first_tier(relevant: np.ndarray, n_relevant: np.ndarray | None = None) -> float:
    """FT: mean over queries of (relevant items in the top R) / R, R = ``n_relevant`` (default row sums).

    ``relevant`` ``(Q, N_ranked)`` in ranked order; queries with R = 0 are skipped.
    """
    rel, total = _relevance(relevant, n_relevant)
    return _mean_over_answerable(_top_recall(rel, total, 1), total)


def second_tier(relevant: np.ndarray, n_relevant: np.ndarray | None = None) -> float:
    """ST: mean over queries of (relevant items in the top 2R) / R; as :func:`first_tier` otherwise."""
    rel, total = _relevance(relevant, n_relevant)
    return _mean_over_answerable(_top_recall(rel, total, 2), total)


def _ap_per_query(rel: np.ndarray, total: np.ndarray) -> np.ndarray:
    ranks = np.arange(1, rel.shape[1] + 1)
    precision = np.cumsum(rel, axis=1) / ranks
    return (precision * rel).sum(1) / np.maximum(total, 1)


def average_precision(relevant: np.ndarray, n_relevant: np.ndarray | None = None) -> np.ndarray:
    """AP of each query ``(Q,)``: ``(1/R) * sum of precision@k over the ranks k of relevant items``.

    ``relevant`` ``(Q, N_ranked)`` in ranked order; relevant items missing from a truncated ranking add 0.
    NaN for queries with R = 0.
    """
    rel, total = _relevance(relevant, n_relevant)
    return np.where(total > 0, _ap_per_query(rel, total), np.nan)


def mean_average_precision(relevant: np.ndarray, n_relevant: np.ndarray | None = None) -> float:
    """mAP: mean of :func:`average_precision` over the queries with R > 0."""
    rel, total = _relevance(relevant, n_relevant)
    return _mean_over_answerable(_ap_per_query(rel, total), total)


def _dcg_discounts(n: int) -> np.ndarray:
    """``(n,)`` weights of ranks 1..n in the shape-benchmark DCG: 1 for rank 1, ``1 / log2(i)`` after."""
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return np.where(ranks == 1, 1.0, 1.0 / np.log2(np.maximum(ranks, 2)))


def _dcg_per_query(rel: np.ndarray, total: np.ndarray) -> np.ndarray:
    gains = (rel * _dcg_discounts(rel.shape[1])).sum(1)
    ideal_cum = np.concatenate([[0.0], np.cumsum(_dcg_discounts(int(total.max(initial=0))))])
    return gains / np.maximum(ideal_cum[total], 1e-300)


def dcg(relevant: np.ndarray, n_relevant: np.ndarray | None = None) -> float:
    """Normalised DCG of the shape-retrieval benchmark, mean over queries with R > 0.

    ``DCG_1 = rel_1``, ``DCG_i = DCG_{i-1} + rel_i / log2(i)`` over the whole ranking, divided by the ideal
    ``1 + sum_{j=2..R} 1/log2(j)``. ``relevant`` ``(Q, N_ranked)`` in ranked order.

    Caveat: over a full ranking its chance level is about ``ln(pN) / ln(N)`` (0.75 for N = 19,700, p = 1/8), above
    the 0.45 the paper reports for SIFT on FI (Table 2), so the paper probably cut the ranking at a depth it does
    not state; compare DCG values between our own runs, not with the paper's.
    """
    rel, total = _relevance(relevant, n_relevant)
    return _mean_over_answerable(_dcg_per_query(rel, total), total)


def _nmrr_per_query(rel: np.ndarray, total: np.ndarray, gtm: int) -> np.ndarray:
    k = np.minimum(4 * total, 2 * gtm).astype(np.float64)
    ranks = np.arange(1, rel.shape[1] + 1, dtype=np.float64)
    within = rel & (ranks[None, :] <= k[:, None])
    rank_sum = (ranks * within).sum(1) + (total - within.sum(1)) * 1.25 * k
    ng = np.maximum(total, 1)
    mrr = rank_sum / ng - 0.5 - ng / 2.0
    return mrr / np.maximum(1.25 * k - 0.5 - ng / 2.0, 1e-300)


def anmrr(relevant: np.ndarray, n_relevant: np.ndarray | None = None, gtm: int | None = None) -> float:
    """MPEG-7 ANMRR (0 best, 1 worst), mean over queries with NG > 0. ``relevant`` ``(Q, N_ranked)``, ranked.

    Per query with NG = ``n_relevant`` ground-truth items: ``K = min(4 NG, 2 GTM)`` with GTM the largest NG over
    the queries (or ``gtm``); ``Rank(k)`` is the 1-based rank of the k-th relevant item, or ``1.25 K`` if that
    exceeds K or the item is missing; ``AVR = sum Rank / NG``; ``MRR = AVR - 0.5 - NG/2``;
    ``NMRR = MRR / (1.25 K - 0.5 - NG/2)``.
    """
    rel, total = _relevance(relevant, n_relevant)
    gtm = int(total.max(initial=0)) if gtm is None else int(gtm)
    return _mean_over_answerable(_nmrr_per_query(rel, total, gtm), total)


def _relevant_counts(query_keys: np.ndarray, gallery_keys: np.ndarray, exclude_self: bool) -> np.ndarray:
    """Gallery items sharing each query's key ``(Q,)``; keys < 0 match nothing; minus the query itself if asked."""
    size = int(max(query_keys.max(initial=-1), gallery_keys.max(initial=-1))) + 1
    per_key = np.bincount(gallery_keys[gallery_keys >= 0], minlength=size)
    counts = np.where(query_keys >= 0, per_key[np.maximum(query_keys, 0)], 0)
    return counts - (exclude_self & (query_keys >= 0))


def retrieval_report(
    query_emb: np.ndarray,
    query_labels: Sequence[int],
    gallery_emb: np.ndarray,
    gallery_labels: Sequence[int],
    label_set: str,
    metric: str = "euclidean",
    exclude_self: bool = False,
    chunk_size: int = 512,
) -> dict:
    """NN, FT, ST, mAP8, mAP2, DCG and ANMRR of ranking ``gallery_emb`` ``(N, D)`` for ``query_emb`` ``(Q, D)``.

    Labels are class ids of ``label_set``. Relevance is "same label" for every measure but ``map2``, where it is
    "same polarity" (``LabelSet.polarity``; a class without polarity, Emotion6's neutral, is relevant to nothing).
    ``exclude_self=True``: leave-one-out on the small sets (query set == gallery set). Queries without a relevant
    gallery item are skipped; ``num_queries`` counts the queries the label measures average over. GTM of ANMRR is
    the largest relevant count over all queries. Queries are ranked ``chunk_size`` at a time to bound memory.
    """
    q_lab = np.asarray(query_labels, dtype=np.int64)
    g_lab = np.asarray(gallery_labels, dtype=np.int64)
    if len(q_lab) != len(query_emb) or len(g_lab) != len(gallery_emb):
        raise ValueError("need one label per query and per gallery embedding")
    if exclude_self and (len(q_lab) != len(g_lab) or np.any(q_lab != g_lab)):
        raise ValueError("exclude_self needs the query set to be the gallery (same length and labels)")
    pol = get_label_set(label_set).polarity_ids()
    q_pol, g_pol = pol[q_lab], pol[g_lab]
    n_lab = _relevant_counts(q_lab, g_lab, exclude_self)
    n_pol = _relevant_counts(q_pol, g_pol, exclude_self)
    gtm = int(n_lab.max(initial=0))
    per_query: dict[str, list[np.ndarray]] = {k: [] for k in ("nn", "ft", "st", "map8", "map2", "dcg", "anmrr")}
    for start in range(0, len(q_lab), chunk_size):
        sl = slice(start, start + chunk_size)
        self_index = np.arange(len(q_lab))[sl] if exclude_self else None
        ranked = _rank(np.asarray(query_emb)[sl], gallery_emb, metric, self_index)
        rel = g_lab[ranked] == q_lab[sl, None]
        rel_pol = (g_pol[ranked] == q_pol[sl, None]) & (q_pol[sl, None] >= 0)
        total = n_lab[sl]
        per_query["nn"].append(_nn_per_query(rel))
        per_query["ft"].append(_top_recall(rel, total, 1))
        per_query["st"].append(_top_recall(rel, total, 2))
        per_query["map8"].append(_ap_per_query(rel, total))
        per_query["map2"].append(_ap_per_query(rel_pol, n_pol[sl]))
        per_query["dcg"].append(_dcg_per_query(rel, total))
        per_query["anmrr"].append(_nmrr_per_query(rel, total, gtm))
    report = {}
    for key, parts in per_query.items():
        values = np.concatenate(parts) if parts else np.zeros(0)
        report[key] = _mean_over_answerable(values, n_pol if key == "map2" else n_lab)
    report["num_queries"] = int((n_lab > 0).sum())
    return report
