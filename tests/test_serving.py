"""The registered seed-000 model served over HTTP by ``mlflow models serve``, end to end.

The tiny run's model is registered once into this module's own MLflow store and served as
``models:/<name>@champion`` (``--env-manager local``). Good requests must answer exactly what the same model
answers in process; bad payloads (not an image, a decompression bomb, 0 bytes, a wrong column, malformed JSON,
invalid base64, ~50 MB of base64) must each be a 4xx with a JSON body, never a 5xx or a hang, and the server must
go on serving after every one of them.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from image_emotion.tracking.model_server import ModelServer, ModelServerError

pytestmark = pytest.mark.e2e

MODEL_NAME = "serving-emotion"
SERVER_START_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 60


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _split(column: str, cells: list[str]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": [column], "data": [[c] for c in cells]}}).encode()


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    """POST ``body`` as JSON to ``url``/invocations; (status, body) for any status."""
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    """Register the tiny run's model into a store of this module's own, serve ``@champion``; yields
    ``(base_url, model_uri, test_image_paths)``; the server's process group is stopped at the end."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from image_emotion.data.torch_data import PreparedDataset
    from image_emotion.stages import register

    work, config = tiny_run
    tmp = tmp_path_factory.mktemp("serving")
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    previous_uri = tracking_utils._tracking_uri  # register sets it (and the env var); restored at the end
    env = pytest.MonkeyPatch()
    env.setenv("MLFLOW_TRACKING_URI", store)
    server = None
    try:
        config = config.with_overrides([f"register.model_name={MODEL_NAME}", "register.min_accuracy=0.0"])
        result = register.run(
            config,
            register.RegisterPaths(
                work / "prepared/main",
                work / "models/detector.pt",
                work / "models/classifier/head.pt",
                work / "metrics/evaluate.json",
                tmp / "register.json",
            ),
        )
        assert result["promoted"], result
        model_uri = f"models:/{MODEL_NAME}@champion"
        try:
            server = ModelServer(model_uri, store, tmp / "server.log", start_timeout_s=SERVER_START_TIMEOUT_S)
        except ModelServerError as exc:
            pytest.fail(str(exc))
        test = PreparedDataset.load(work / "prepared/main").split("test")
        images = [test.root / p for p in test.manifest["path"]]
        assert len(images) >= 4, "the tiny run's test split needs at least 4 images"
        yield server.url, model_uri, images
    finally:
        if server is not None:
            server.stop()
        mlflow.set_tracking_uri(previous_uri)
        env.undo()


@pytest.fixture(scope="module")
def in_process(served):
    """The served model loaded in this process (``served`` keeps the module's store as the tracking URI)."""
    import mlflow

    return mlflow.pyfunc.load_model(served[1])


def _good(url: str, image: Path) -> None:
    status, body = _post(url, _split("image", [_b64(image.read_bytes())]))
    assert status == 200, body[:2000]
    assert len(json.loads(body)["predictions"]) == 1


def _assert_same_answer(predictions: list[dict], expected: pd.DataFrame, labels: list[str]) -> None:
    got = pd.DataFrame(predictions)
    assert list(got.columns) == list(expected.columns)
    assert len(got) == len(expected)
    assert got["label"].tolist() == expected["label"].tolist()
    assert set(got["label"]) <= set(labels)
    np.testing.assert_allclose(got[labels].to_numpy(float), expected[labels].to_numpy(float), atol=1e-5)
    np.testing.assert_allclose(got[labels].sum(axis=1), 1.0, atol=1e-4)
    for other in expected.columns.difference([*labels, "regions"]):  # label, polarity (when there), ...
        assert got[other].tolist() == expected[other].tolist(), other
    for g, e in zip(got["regions"], expected["regions"], strict=True):
        g_regions, e_regions = _boxes(g), _boxes(e)
        assert len(g_regions) == len(e_regions) > 0
        np.testing.assert_allclose(g_regions, e_regions, atol=1e-3)


def _boxes(cell: str) -> np.ndarray:
    """A served ``regions`` cell (JSON objects with named fields) as ``(K, 5)``: x1, y1, x2, y2, score."""
    regions = json.loads(cell)
    assert all(set(r) == {"x1", "y1", "x2", "y2", "score"} for r in regions), regions
    return np.asarray([[r["x1"], r["y1"], r["x2"], r["y2"], r["score"]] for r in regions], float)


@pytest.mark.parametrize("count", [1, 4])
def test_http_answer_equals_the_in_process_prediction(served, in_process, count):
    url, _, images = served
    cells = [_b64(p.read_bytes()) for p in images[:count]]
    status, body = _post(url, _split("image", cells))
    print(f"good batch of {count}: HTTP {status}")
    assert status == 200, body[:2000]
    expected = in_process.predict(pd.DataFrame({"image": cells}))
    labels = [c for c in expected.columns if c not in ("label", "polarity", "regions")]
    assert len(labels) == 8  # the tiny run is mikels8
    _assert_same_answer(json.loads(body)["predictions"], expected, labels)


def _png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return _b64(buffer.getvalue())


def test_a_large_image_is_reduced_while_decoded_and_answers_as_the_image_the_model_reads(served, in_process):
    """A test image at the detector's input size, and the same image 20x larger (nearest): decoded one batch at a
    time and reduced by 20 while decoded, the large one reaches the model as the small one, so its answer is the
    same and its regions are the small one's x 20, in the large file's pixels (also over HTTP)."""
    from PIL import Image

    url, _, images = served
    predictor = in_process.unwrap_python_model().predictor
    side = predictor.fit.min_side
    small = Image.open(images[0]).convert("RGB").resize((side, side))
    large = small.resize((side * 20, side * 20), Image.Resampling.NEAREST)
    answers = in_process.predict(pd.DataFrame({"image": [_png(small), _png(large)]}))
    labels = list(predictor.labels)
    np.testing.assert_allclose(answers[labels].iloc[1], answers[labels].iloc[0], atol=1e-6)
    small_regions, large_regions = (_boxes(r) for r in answers["regions"])
    np.testing.assert_allclose(large_regions[:, :4], small_regions[:, :4] * 20, atol=1.5)  # rounded to 0.1 px
    assert large_regions[:, :4].max() > side  # in the large file's pixels, not the model's
    status, body = _post(url, _split("image", [_png(large)]))
    assert status == 200, body[:2000]
    _assert_same_answer(json.loads(body)["predictions"], answers.iloc[1:].reset_index(drop=True), labels)


def test_a_real_photo_is_classified(served):
    from PIL import Image
    from skimage import data

    url, _, _ = served
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG", quality=90)
    status, body = _post(url, _split("image", [_b64(buffer.getvalue())]))
    print(f"astronaut JPEG: HTTP {status}")
    assert status == 200, body[:2000]
    (row,) = json.loads(body)["predictions"]
    from image_emotion.data.emotions import MIKELS8

    assert row["label"] in MIKELS8.labels
    assert row["label"] == max(MIKELS8.labels, key=lambda c: row[c])
    regions = _boxes(row["regions"])
    assert len(regions) and all(0 <= x1 <= x2 <= 512 and 0 <= y1 <= y2 <= 512 for x1, y1, x2, y2, _ in regions)


def _png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A 1x1 PNG whose IHDR claims ``width`` x ``height`` pixels (the CRC fixed, so decoders trust it)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    assert png[12:16] == b"IHDR"
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def _fifty_mb_of_base64() -> bytes:
    rng = np.random.default_rng(0)
    return _split("image", [_b64(rng.integers(0, 256, size=37_500_000, dtype=np.uint8).tobytes())])


# name -> (the request body, made when the test runs; words one of which the error must hold, case-insensitive)
BAD = {
    "not an image": (lambda: _split("image", [_b64(b"hello")]), ("not an image",)),
    # 900 MP: over PIL's own bomb limit (2 x Image.MAX_IMAGE_PIXELS), refused when the header is read
    "decompression bomb": (lambda: _split("image", [_b64(_png_bomb(30000, 30000))]), ("bomb", "pixels")),
    # 64 MP: under PIL's limits, over images.max_pixels (50 MP), refused before the pixels are decoded
    "over max_pixels": (lambda: _split("image", [_b64(_png_bomb(8000, 8000))]), ("over serving.max_image_pixels",)),
    "0-byte file": (lambda: _split("image", [_b64(b"")]), ("empty", "0 bytes")),
    "wrong column": (lambda: _split("img", [_b64(b"hello")]), ("missing inputs ['image']", "column 'image'")),
    "malformed JSON": (lambda: b"{not json", ("valid json",)),
    "invalid base64": (lambda: _split("image", ["@@@not-base64@@@"]), ("valid base64",)),
    "50 MB of base64": (_fifty_mb_of_base64, ("over serving.max_image_bytes",)),
    # limits of the logged model (serving.*), checked on the headers before anything is decoded
    "65 rows": (lambda: _split("image", [_b64(_png_bomb(8, 8))] * 65), ("over serving.max_rows = 64",)),
    "5 x 49 MP": (lambda: _split("image", [_b64(_png_bomb(7000, 7000))] * 5), ("over serving.max_request_pixels",)),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_payload_is_a_4xx_and_the_server_keeps_serving(served, name):
    url, _, images = served
    make_body, words = BAD[name]
    body = make_body()
    start = time.monotonic()
    status, answer = _post(url, body)
    print(f"{name}: HTTP {status} in {time.monotonic() - start:.1f} s: {answer[:300]!r}")
    assert 400 <= status < 500, (status, answer[:2000])
    error = json.loads(answer)
    assert error.get("error_code") and error.get("message"), error
    # the reason is in the message itself, and no server traceback goes to the client
    assert any(w.lower() in error["message"].lower() for w in words), (words, error["message"][:2000])
    assert "stack_trace" not in error and "Traceback" not in error["message"], error.get("stack_trace", "")[-2000:]
    _good(url, images[0])


def test_the_logged_model_installs_from_the_registry_and_its_example_validates(served):
    """The model's pins carry no local version label (``torch==2.14.1+cpu`` cannot come from PyPI), and MLflow's
    own serving check passes on the logged input example."""
    import re
    import warnings

    import mlflow
    from mlflow.models import convert_input_example_to_serving_input, validate_serving_input

    from image_emotion.data.emotions import MIKELS8
    from image_emotion.tracking.packaging import public_version

    _, model_uri, _ = served
    requirements = Path(mlflow.pyfunc.get_model_dependencies(model_uri)).read_text().split()
    pins = [r for r in requirements if "==" in r]
    assert {r.split("==")[0] for r in pins} >= {"torch", "torchvision", "mlflow", "pillow"}
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", r) for r in pins), pins
    assert public_version("2.14.1+cpu") == "2.14.1" and public_version("1.15.1") == "1.15.1"
    example = mlflow.models.Model.load(model_uri).load_input_example(mlflow.artifacts.download_artifacts(model_uri))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # validate_serving_input is deprecated in mlflow 3.13+
        out = validate_serving_input(model_uri, convert_input_example_to_serving_input(example))
    assert len(out) == len(example) == 2 and set(out["label"]) <= set(MIKELS8.labels)
