"""The embedding index: exact search answers as a hand computation does (ties: the lower position first), faiss's
HNSW finds nearly all of the exact neighbours, both survive a save/load round trip, and bad input is named."""

import numpy as np
import pytest

from image_emotion.errors import ConfigError
from image_emotion.retrieval import EmbeddingIndex


def test_exact_search_by_hand_with_a_tie():
    points = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 1.0], [0.0, -2.0]])  # distances from (0, 0): 5, 1, 1, 2
    index = EmbeddingIndex(points, ["a", "b", "c", "d"], kind="exact")
    distances, positions = index.search(np.array([[0.0, 0.0]]), k=3)
    assert positions.tolist() == [[1, 2, 3]]  # b and c tie at 1: the lower position first
    assert distances.tolist() == [[1.0, 1.0, 2.0]]
    assert [index.ids[p] for p in positions[0]] == ["b", "c", "d"]
    _, all_positions = index.search(np.array([[0.0, 0.0]]), k=10)  # k is capped at the collection
    assert all_positions.tolist() == [[1, 2, 3, 0]]


def test_hnsw_finds_nearly_all_exact_neighbours(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3000, 32)).astype(np.float32)
    queries = rng.normal(size=(50, 32)).astype(np.float32)
    exact = EmbeddingIndex(data, [str(i) for i in range(3000)], kind="exact")
    hnsw = EmbeddingIndex(data, [str(i) for i in range(3000)], kind="hnsw")
    _, truth = exact.search(queries, 5)
    distances, found = hnsw.search(queries, 5)
    recall = np.mean([len(set(t) & set(f)) / 5 for t, f in zip(truth, found, strict=True)])
    assert recall >= 0.95
    expected = np.linalg.norm(queries[:, None, :] - data[found], axis=-1)  # faiss returns true distances
    assert np.allclose(distances, expected, atol=1e-4)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_save_and_load_answer_the_same(tmp_path, kind):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(200, 8))
    index = EmbeddingIndex(data, [f"img_{i}.jpg" for i in range(200)], labels=list(range(8)) * 25, kind=kind)
    loaded = EmbeddingIndex.load(index.save(tmp_path / "index"))
    queries = rng.normal(size=(10, 8))
    assert (loaded.kind, loaded.ids[:2], loaded.labels[:3]) == (kind, ["img_0.jpg", "img_1.jpg"], [0, 1, 2])
    for a, b in zip(index.search(queries, 7), loaded.search(queries, 7), strict=True):
        assert np.array_equal(a, b)


def test_auto_picks_exact_for_small_collections_and_hnsw_for_large():
    data = np.random.default_rng(2).normal(size=(100, 4))
    assert EmbeddingIndex(data, list("x" * 100), kind="auto", exact_below=101).kind == "exact"
    assert EmbeddingIndex(data, list("x" * 100), kind="auto", exact_below=100).kind == "hnsw"


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ConfigError, match="one id"):
        EmbeddingIndex(np.zeros((3, 2)), ["a", "b"])
    with pytest.raises(ConfigError, match="unknown index kind 'ivf'"):
        EmbeddingIndex(np.zeros((3, 2)), ["a", "b", "c"], kind="ivf")
    index = EmbeddingIndex(np.zeros((3, 2)), ["a", "b", "c"], kind="exact")
    with pytest.raises(ConfigError, match="queries have dimension 3, the index 2"):
        index.search(np.zeros((1, 3)), 1)
    with pytest.raises(ConfigError, match="not a readable embedding index"):
        EmbeddingIndex.load(tmp_path / "nothing")
    saved = EmbeddingIndex(np.zeros((3, 2)), ["a", "b", "c"], kind="hnsw").save(tmp_path / "h")
    (saved / "faiss.index").unlink()
    with pytest.raises(ConfigError, match=r"faiss\.index: not found"):
        EmbeddingIndex.load(saved)
