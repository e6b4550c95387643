"""Affective-image-retrieval measures of seed 002 (NN, FT, ST, mAP8/mAP2, DCG, ANMRR) on hand-made rankings whose
values are worked out by hand in the comments, plus scikit-learn's average precision as an independent oracle."""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from image_emotion.errors import ConfigError
from image_emotion.metrics import (
    anmrr,
    average_precision,
    dcg,
    first_tier,
    mean_average_precision,
    nearest_neighbor,
    rank_gallery,
    retrieval_report,
    second_tier,
)

LOG2_3 = math.log2(3)
ALL = (nearest_neighbor, first_tier, second_tier, mean_average_precision, dcg, anmrr)


def test_ranking_with_two_relevant_items_hand_computed():
    rel = [[1, 0, 1, 0]]  # R = 2, relevant at ranks 1 and 3
    assert nearest_neighbor(rel) == 1.0
    assert first_tier(rel) == pytest.approx(1 / 2)  # top 2 holds one of the two
    assert second_tier(rel) == pytest.approx(1.0)  # top 4 holds both
    assert mean_average_precision(rel) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert dcg(rel) == pytest.approx((1 + 1 / LOG2_3) / (1 + 1 / math.log2(2)))
    # NG = 2, GTM = 2, K = min(8, 4) = 4; AVR = (1 + 3) / 2 = 2; MRR = 2 - 0.5 - 1 = 0.5; NMRR = 0.5 / (5 - 1.5)
    assert anmrr(rel) == pytest.approx(1 / 7)


def test_means_over_two_queries_hand_computed():
    rel = [[1, 0, 1, 0], [0, 1, 0, 0]]  # R = 2 and R = 1
    assert nearest_neighbor(rel) == pytest.approx(0.5)
    assert first_tier(rel) == pytest.approx((1 / 2 + 0) / 2)
    assert second_tier(rel) == pytest.approx((1 + 1) / 2)
    np.testing.assert_allclose(average_precision(rel), [5 / 6, 1 / 2])
    assert mean_average_precision(rel) == pytest.approx((5 / 6 + 1 / 2) / 2)
    # the shape-benchmark DCG weighs rank 2 like rank 1 (1/log2 2 = 1), so the second query scores 1 (sklearn's
    # ndcg_score discounts by 1/log2(i + 1) and would give 1/log2 3: a different measure, not used as an oracle)
    assert dcg(rel) == pytest.approx(((1 + 1 / LOG2_3) / 2 + 1.0) / 2)
    # GTM = 2; second query: NG = 1, K = min(4, 4) = 4, AVR = 2, MRR = 2 - 1 = 1, NMRR = 1 / (5 - 1) = 1/4
    assert anmrr(rel) == pytest.approx((1 / 7 + 1 / 4) / 2)


def test_query_with_exactly_one_relevant_item():
    rel = [[0, 0, 1, 0, 0]]  # R = 1 at rank 3
    assert nearest_neighbor(rel) == 0.0
    assert first_tier(rel) == 0.0
    assert second_tier(rel) == 0.0  # top 2
    assert mean_average_precision(rel) == pytest.approx(1 / 3)
    assert dcg(rel) == pytest.approx(1 / LOG2_3)
    # GTM = 1: K = min(4, 2) = 2 and rank 3 > K costs 1.25 K = 2.5: MRR = 2.5 - 1 = 1.5 = 1.25 K - 0.5 - 0.5
    assert anmrr(rel) == pytest.approx(1.0)
    # GTM = 5: K = min(4, 10) = 4, rank 3 counts: MRR = 3 - 1 = 2, NMRR = 2 / (5 - 1)
    assert anmrr(rel, gtm=5) == pytest.approx(0.5)


def test_every_item_relevant_scores_best():
    rel = [[1, 1, 1, 1], [1, 1, 1, 1]]
    for fn in (nearest_neighbor, first_tier, second_tier, mean_average_precision, dcg):
        assert fn(rel) == pytest.approx(1.0), fn.__name__
    assert anmrr(rel) == pytest.approx(0.0)


def test_relevant_items_last_is_worst_case():
    rel = [[0, 0, 0, 1, 1]]  # R = 2 at ranks 4 and 5
    assert nearest_neighbor(rel) == 0.0
    assert first_tier(rel) == 0.0
    assert second_tier(rel) == pytest.approx(1 / 2)  # top 4
    assert mean_average_precision(rel) == pytest.approx((1 / 4 + 2 / 5) / 2)
    assert dcg(rel) == pytest.approx((1 / 2 + 1 / math.log2(5)) / 2)
    # K = 4: rank 4 counts, rank 5 costs 5; AVR = 4.5, MRR = 4.5 - 1.5 = 3, NMRR = 3 / 3.5
    assert anmrr(rel) == pytest.approx(6 / 7)
    # one relevant item, last of five, GTM = 1: beyond K = 2, the MPEG-7 maximum
    assert anmrr([[0, 0, 0, 0, 1]]) == pytest.approx(1.0)


def test_anmrr_k_is_min_of_4ng_and_2gtm():
    # GTM = 5 from the second query; first query NG = 1: K = min(4, 10) = 4 and rank 4 counts
    # (AVR = 4, MRR = 3, NMRR = 3 / (5 - 1)); second query ranks 1..5 -> 0. With K = 2 NG it would be 1.
    rel = [[0, 0, 0, 1, 0, 0], [1, 1, 1, 1, 1, 0]]
    assert anmrr(rel) == pytest.approx((3 / 4 + 0) / 2)


def test_truncated_ranking_uses_total_relevant_counts():
    rel, total = [[1, 0, 0]], [3]  # two of the three relevant items not returned
    assert nearest_neighbor(rel, total) == 1.0
    assert first_tier(rel, total) == pytest.approx(1 / 3)
    assert mean_average_precision(rel, total) == pytest.approx(1 / 3)
    assert dcg(rel, total) == pytest.approx(1 / (1 + 1 + 1 / LOG2_3))
    # NG = 3, K = min(12, 6) = 6; ranks 1, 7.5, 7.5: AVR = 16/3, MRR = 16/3 - 2, NMRR = (10/3) / 5.5
    assert anmrr(rel, total) == pytest.approx(20 / 33)
    with pytest.raises(ValueError):
        first_tier([[1, 1, 0]], [1])  # fewer relevant in total than in the ranking


def test_queries_without_relevant_items_are_skipped():
    rel = [[1, 0], [0, 0]]
    assert nearest_neighbor(rel) == 1.0  # not 0.5: the second query cannot be answered
    assert first_tier(rel) == 1.0
    assert anmrr(rel) == 0.0
    assert np.isnan(average_precision(rel)[1])
    for fn in ALL:
        assert np.isnan(fn([[0, 0, 0]])), fn.__name__


def test_ties_in_distance_keep_the_lower_gallery_index_first():
    gallery = np.array([[3.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, -1.0]])
    query = np.zeros((1, 2))  # distances 3, 1, 1, 1
    np.testing.assert_array_equal(rank_gallery(query, gallery), [[1, 2, 3, 0]])
    shifted = np.array([[1.0, 0.0]])  # distances 2, sqrt2, 0, sqrt2
    np.testing.assert_array_equal(rank_gallery(shifted, gallery), [[2, 1, 3, 0]])
    np.testing.assert_array_equal(rank_gallery(shifted, gallery, "cosine"), [[0, 2, 1, 3]])  # 0, 1, 0, 1


def test_leave_one_out_drops_each_query_itself():
    emb = np.array([[0.0], [1.0], [3.0], [7.0]])
    np.testing.assert_array_equal(rank_gallery(emb, emb)[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(
        rank_gallery(emb, emb, exclude_self=True), [[1, 2, 3], [0, 2, 3], [1, 0, 3], [2, 1, 0]]
    )
    # duplicates: the query's own index is removed, not merely the first item at distance 0
    dup = np.array([[0.0], [0.0], [5.0]])
    np.testing.assert_array_equal(rank_gallery(dup, dup, exclude_self=True), [[1, 2], [0, 2], [0, 1]])
    with pytest.raises(ValueError):
        rank_gallery(emb[:2], emb, exclude_self=True)


def test_cosine_and_euclidean_rank_differently():
    query, gallery = np.array([[1.0, 0.0]]), np.array([[10.0, 0.0], [1.0, 1.0]])
    np.testing.assert_array_equal(rank_gallery(query, gallery, "euclidean"), [[1, 0]])  # 9 vs 1
    np.testing.assert_array_equal(rank_gallery(query, gallery, "cosine"), [[0, 1]])  # 0 vs 1 - 1/sqrt2
    with pytest.raises(ConfigError):
        rank_gallery(query, gallery, "manhattan")


@pytest.mark.parametrize("chunk_size", [1, 2, 512])
def test_report_leave_one_out_on_mikels8(chunk_size):
    # 1-D embeddings; ids: 0 amusement, 4 anger, 1 awe. Rankings without self (distance |x_i - x_j|):
    #   q0 [1, 2, 4, 3] -> same label [0, 1, 1, 0]; q2 [4, 1, 0, 3] -> [1, 0, 1, 0];
    #   q4 [2, 1, 3, 0] (tie 1, 3 at distance 3) -> [1, 0, 0, 1]; q1 (anger) and q3 (awe) have no match: skipped.
    emb = np.array([[0.0], [1.0], [3.0], [7.0], [4.0]])
    labels = [0, 4, 0, 1, 0]
    r = retrieval_report(emb, labels, emb, labels, "mikels8", exclude_self=True, chunk_size=chunk_size)
    assert r["num_queries"] == 3
    assert r["nn"] == pytest.approx(2 / 3)
    assert r["ft"] == pytest.approx(1 / 2)
    assert r["st"] == pytest.approx(1.0)
    assert r["map8"] == pytest.approx((7 / 12 + 5 / 6 + 3 / 4) / 3)
    assert r["dcg"] == pytest.approx(((1 + 1 / LOG2_3) / 2 * 2 + (1 + 1 / 2) / 2) / 3)
    assert r["anmrr"] == pytest.approx((2 / 7 + 1 / 7 + 2 / 7) / 3)  # GTM = 2, K = 4
    # polarity (+ - + + +): q0 [0,1,1,1] 23/36, q2 [1,0,1,1] 29/36, q3 [1,1,0,1] 33/36, q4 [1,0,1,1]; q1 skipped
    assert r["map2"] == pytest.approx((23 + 29 + 33 + 29) / 36 / 4)
    assert set(r) == {"nn", "ft", "st", "map8", "map2", "dcg", "anmrr", "num_queries"}


def test_report_test_against_train_protocol():
    # FI protocol: test queries against the training gallery. Ranking [1, 2, 0]: fear, contentment, amusement
    r = retrieval_report([[0.0]], [0], [[5.0], [1.0], [2.0]], [0, 6, 2], "mikels8")
    assert (r["nn"], r["ft"], r["st"]) == (0.0, 0.0, 0.0)
    assert r["map8"] == pytest.approx(1 / 3)
    assert r["map2"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # contentment and amusement share the polarity
    assert r["dcg"] == pytest.approx(1 / LOG2_3)
    assert r["anmrr"] == pytest.approx(1.0)  # GTM = 1, K = 2, rank 3 beyond
    assert r["num_queries"] == 1


def test_report_neutral_has_no_polarity():
    # emotion6 ids: 6 neutral, 3 joy, 5 surprise. Neutrals find each other (map8 = 1, the only answerable queries);
    # for map2 they are skipped and relevant to nobody: joy [1, 3, 0] -> [0, 1, 0] = 1/2, surprise [2, 1, 0] -> 1
    emb = np.array([[0.0], [1.0], [2.0], [3.0]])
    labels = [6, 6, 3, 5]
    r = retrieval_report(emb, labels, emb, labels, "emotion6", exclude_self=True)
    assert r["map8"] == pytest.approx(1.0)
    assert r["num_queries"] == 2
    assert r["map2"] == pytest.approx((1 / 2 + 1) / 2)


def test_average_precision_matches_sklearn():
    rng = np.random.default_rng(7)
    rel = rng.random((20, 30)) < 0.3
    rel[:, 5] = True  # every query has a relevant item
    scores = -np.arange(rel.shape[1], dtype=float)  # rank 1 scores highest, no ties
    expected = [average_precision_score(row, scores) for row in rel]
    np.testing.assert_allclose(average_precision(rel), expected)
    assert mean_average_precision(rel) == pytest.approx(np.mean(expected))
