"""What one request to a served model may ask (``tracking/served_input.py``, ``serving`` in params.yaml): every
limit refused with a message naming its key before anything is decoded, images decoded a batch at a time and
reduced while decoded, ``k`` and emotion-model lists checked, the HNSW search width fixed with the index."""

from __future__ import annotations

import base64
import io
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from image_emotion.config import ServingConfig
from image_emotion.data.images import Fit
from image_emotion.errors import ConfigError
from image_emotion.retrieval import EmbeddingIndex
from image_emotion.tracking.retrieval_pyfunc import found
from image_emotion.tracking.served_input import (
    BadImageInput,
    BadServedParameter,
    Deadline,
    RequestTooLarge,
    checked_k,
    decoded_batches,
    limits_of,
    request_images,
    unique_names,
)


def _header_only_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height`` (CRC fixed): what a header check must catch."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def _encoded(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _frame(cells: list) -> pd.DataFrame:
    return pd.DataFrame({"image": cells})


@pytest.mark.parametrize(
    ("limits", "cells", "message"),
    [
        (ServingConfig(max_rows=3), [b"x"] * 4, r"the request's 4 rows: over serving\.max_rows = 3; send fewer"),
        (ServingConfig(max_image_bytes=1000), [b"\0" * 1001], r"row 0: 1,001 bytes: over serving\.max_image_bytes"),
        (
            ServingConfig(max_request_bytes=2500),
            [_header_only_png(8, 8) + b"\0" * 1000] * 3,
            r"the request's 3,\d{3} bytes: over serving\.max_request_bytes = 2,500",
        ),
        (
            ServingConfig(),
            [_header_only_png(8000, 8000)],
            r"row 0: 8000x8000 = 64,000,000 pixels: over serving\.max_image_pixels = 50,000,000",
        ),
        (
            ServingConfig(),
            [_header_only_png(7000, 7000)] * 5,
            r"the request's 245,000,000 pixels: over serving\.max_request_pixels = 200,000,000",
        ),
    ],
)
def test_a_request_over_a_limit_names_the_limit_before_decoding(limits, cells, message):
    tracemalloc.start()
    with pytest.raises(RequestTooLarge, match=message):
        request_images(_frame(cells), limits)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * 2**20  # headers only: 5 x 49 MP decoded would be ~700 MB


def test_a_request_at_every_limit_passes_and_keeps_each_images_size():
    sizes = [(30, 20), (10, 40)]
    cells = [base64.b64decode(_encoded(Image.new("RGB", s))) for s in sizes]
    limits = ServingConfig(max_rows=2, max_request_pixels=30 * 20 + 10 * 40, max_image_pixels=600)
    checked = request_images(_frame(cells), limits)
    assert checked.sizes == sizes and checked.files == cells


def test_images_are_decoded_one_batch_at_a_time_and_reduced_to_what_the_model_reads():
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    large = small.resize((600, 400), Image.Resampling.NEAREST)  # 10x: a reduce by 10 gives `small` back
    images = request_images(_frame([_encoded(large)] * 5), ServingConfig())
    batches = decoded_batches(images, 2, Fit(40), ServingConfig())
    first = next(batches)  # a generator: the later rows are not decoded yet
    assert [img.size for img in first] == [(60, 40), (60, 40)]
    assert np.array_equal(np.asarray(first[0]), np.asarray(small))
    assert first[0].info["original_size"] == (600, 400)
    assert [len(b) for b in batches] == [2, 1]
    full = next(decoded_batches(images, 1, None, ServingConfig()))[0]
    assert full.size == (600, 400)  # no fit: the file's size


def test_a_16_bit_image_is_reduced_before_its_conversion():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 65536, (2000, 3000), dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    images = request_images(_frame([buffer.getvalue()]), ServingConfig())
    tracemalloc.start()
    (image,) = next(decoded_batches(images, 1, Fit(100), ServingConfig()))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert image.mode == "RGB" and image.size == (150, 100)
    assert image.info["original_size"] == (3000, 2000)
    assert peak < 48 * 2**20  # a float64 copy of the 6 MP image alone is 48 MB
    expected = (pixels[:20, :20].astype(np.float64) / 65535 * 255).mean()  # the reduced image's first pixel
    assert abs(float(np.asarray(image)[0, 0, 0]) - expected) < 1.0


def test_a_bad_cell_names_its_row_and_a_header_that_is_not_an_image_is_refused():
    with pytest.raises(BadImageInput, match=r"row 1: .*not an image PIL can decode"):
        request_images(_frame([_encoded(Image.new("RGB", (4, 4))), b"hello"]), ServingConfig())
    with pytest.raises(BadImageInput, match=r"row 0: empty image"):
        request_images(_frame([b""]), ServingConfig())
    with pytest.raises(BadImageInput, match=r"row 0: decompression bomb refused"):
        request_images(_frame([_header_only_png(40000, 40000)]), ServingConfig(max_image_pixels=2 * 10**9))


@pytest.mark.parametrize(
    ("k", "message"),
    [(10**9, r"k = 1,000,000,000 neighbours: over serving\.max_k = 100"), (0, "at least 1"), (2.5, "whole"),
     ("5; drop", "whole"), (True, "whole")],
)  # fmt: skip
def test_k_is_a_whole_number_up_to_max_k(k, message):
    with pytest.raises(BadServedParameter, match=message):
        checked_k(k, ServingConfig())


def test_k_in_range_is_read_from_any_json_number():
    assert [checked_k(k, ServingConfig()) for k in (1, 100, 7.0, "12")] == [1, 100, 7, 12]


def test_emotion_models_are_named_once_and_counted():
    assert unique_names(["mikels8", " binary", ""], "emotion models", "max_emotion_models", 8) == ["mikels8", "binary"]
    with pytest.raises(BadServedParameter, match="'mikels8' is asked for more than once"):
        unique_names(["mikels8"] * 5000, "emotion models", "max_emotion_models", 10**6)
    with pytest.raises(RequestTooLarge, match=r"9 emotion models: over serving\.max_emotion_models = 8"):
        unique_names([f"m{i}" for i in range(9)], "emotion models", "max_emotion_models", 8)


def test_the_limits_travel_with_the_model_and_unknown_keys_are_errors():
    assert limits_of(None) == ServingConfig()
    assert limits_of({"max_rows": 3}).max_rows == 3
    with pytest.raises(ConfigError, match=r"unknown key .max_rowz. \(did you mean .max_rows.\?\)"):
        limits_of({"max_rowz": 3})


def test_the_deadline_stops_between_batches_once_the_servers_timeout_passed(monkeypatch):
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "0.01")
    deadline = Deadline()
    deadline.check(0, 3)  # within it
    time.sleep(0.02)
    with pytest.raises(Exception, match=r"stopped after 1 of 3 images: past the server's 0\.01 s request timeout"):
        deadline.check(1, 3)
    monkeypatch.delenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT")
    Deadline().check(10**6, 10**6)  # no server timeout: never stops


def test_hnsw_search_width_is_fixed_with_the_index_and_never_set_by_a_query(tmp_path):
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(500, 8)).astype(np.float32)
    index = EmbeddingIndex(vectors, [str(i) for i in range(500)], kind="hnsw", ef_search=40)
    before = index._faiss.hnsw.efSearch
    _, positions = index.search(vectors[:3], 100)  # k above ef_search widens this search only
    assert index._faiss.hnsw.efSearch == before
    assert positions.shape == (3, 100) and (positions[:, 0] == [0, 1, 2]).all()
    assert EmbeddingIndex.load(index.save(tmp_path / "index")).ef_search == 40


def test_places_hnsw_leaves_unfilled_are_not_read_as_the_last_item():
    """300 equal vectors: HNSW reaches only some of them for k = 300 and faiss fills the rest with -1, which
    numpy would read as the last item."""
    index = EmbeddingIndex(np.zeros((300, 4), np.float32), [str(i) for i in range(300)], kind="hnsw")
    distances, positions = index.search(np.zeros((1, 4), np.float32), 300)
    unfilled = positions[0] < 0
    assert unfilled.any() and np.isinf(distances[0][unfilled]).all()
    pairs = found(distances[0], positions[0])
    assert len(pairs) == (~unfilled).sum() and all(p >= 0 for _, p in pairs)
    assert sorted(p for _, p in pairs) == sorted(set(positions[0][~unfilled].tolist()))


def test_a_request_past_the_servers_timeout_decodes_no_further_batch(monkeypatch):
    from image_emotion.tracking.served_input import request_batches

    cells = [_encoded(Image.new("RGB", (8, 8)))] * 3
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "0")
    batches = request_batches(_frame(cells), ServingConfig(), 2, None)
    assert next(batches)[0] == 0  # the first batch is always answered
    with pytest.raises(Exception, match=r"stopped after 2 of 3 images"):
        next(batches)
    (only,) = request_batches(_frame(cells[:2]), ServingConfig(), 2, None)  # all in one batch: nothing to stop
    assert only[0] == 0 and len(only[1]) == 2
