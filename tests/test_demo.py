"""``image-emotion demo``: the page answers an upload with what predict, retrieve and describe answer for the same
file, holds uploads to the serving limits, and works in a real browser (Debian's Chromium, headless, no host
name resolvable but loopback): upload, result shown, a bad file answered with its message. The screenshots are
kept under ``test-artifacts/screenshots/``."""

import json
import shutil
import threading
import urllib.request

import pytest
from browser import chromium, needs_chromium, screenshot
from PIL import Image
from tiny import tiny_generative_model, tiny_retrieval_model

from image_emotion.cli import main
from image_emotion.config import ServingConfig
from image_emotion.errors import ImageEmotionError
from image_emotion.inference import models
from image_emotion.inference.demo import DemoModels, UploadTooLarge, analyze, decode_upload, serve


@pytest.fixture(scope="module")
def demo(tiny_run, tmp_path_factory):
    """(the models of the three parts, their files as CLI options, a photo, a corrupt file): the tiny run's
    classifier, a tiny retrieval model and index, a tiny generative model."""
    work, _ = tiny_run
    out = tmp_path_factory.mktemp("demo")
    metric, index, _, _ = tiny_retrieval_model(out / "retrieval")
    generative = tiny_generative_model(out / "generative")
    emotion = {"detector": work / "models/detector.pt", "head": work / "models/classifier/head.pt"}
    loaded = DemoModels()
    loaded.resolved["emotion"] = models.resolve("emotion", files=emotion)
    loaded.resolved["retrieval"] = models.resolve("retrieval", files={"model": metric, "index": index})
    loaded.resolved["generative"] = models.resolve("generative", files={"model": generative})
    photo = out / "photo.png"
    shutil.copy(sorted((work / "synthetic/main/images").iterdir())[5], photo)
    broken = out / "holiday.jpg"
    broken.write_bytes(b"\xff\xd8\xff this is not a jpeg")
    options = {
        "predict": ["--detector", str(emotion["detector"]), "--head", str(emotion["head"])],
        "retrieve": ["--model", str(metric), "--index", str(index)],
        "describe": ["--model", str(generative)],
    }
    return loaded, options, photo, broken


def _cli_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_an_upload_is_answered_as_predict_retrieve_and_describe_answer_the_file(demo, capsys):
    loaded, options, photo, _ = demo
    answer = analyze(decode_upload(photo.read_bytes(), photo.name, ServingConfig()), loaded, k=3)
    predicted = _cli_json(capsys, "predict", str(photo), *options["predict"])[str(photo)]
    retrieved = _cli_json(capsys, "retrieve", str(photo), "--k", "3", *options["retrieve"])[str(photo)]
    described = _cli_json(capsys, "describe", str(photo), *options["describe"])[str(photo)]
    overlay = answer["emotion"].pop("overlay")
    assert answer["emotion"] == predicted
    assert overlay.startswith("data:image/png;base64,") and len(overlay) > 1000
    items = answer["neighbours"]["items"]
    assert [{k: v for k, v in n.items() if k != "thumbnail"} for n in items] == retrieved["neighbours"]
    assert answer["neighbours"]["label"] == retrieved["label"]
    assert all(n["thumbnail"].startswith("data:image/png;base64,") for n in items)  # the files are here
    assert answer["generated"] == described and [d["emotion_model"] for d in described] == ["mikels8", "binary"]
    assert answer["models"]["generative"]["warning"].startswith("this model was trained on the embedded synthetic")


def test_a_missing_model_leaves_its_part_empty_with_the_reason(demo, tmp_path, monkeypatch):
    loaded, _, photo, _ = demo
    monkeypatch.chdir(tmp_path)  # no models/ here and no tracking store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent.db'}")
    partial = DemoModels.load(tmp_path / "params.yaml")
    assert partial.resolved == {} and set(partial.missing) == {"emotion", "retrieval", "generative"}
    assert "run `dvc repro`" in partial.missing["retrieval"]
    partial.resolved["emotion"] = loaded.resolved["emotion"]
    answer = analyze(Image.open(photo).convert("RGB"), partial)
    assert answer["emotion"]["label"] and answer["neighbours"] is None and answer["generated"] is None
    assert answer["models"]["retrieval"] == {"missing": partial.missing["retrieval"]}


def test_an_upload_over_a_limit_or_not_an_image_is_one_line_naming_it(demo):
    _, _, photo, broken = demo
    data = photo.read_bytes()
    with pytest.raises(UploadTooLarge, match=rf"^photo.png: {len(data)} bytes, over serving.max_image_bytes \(100\)"):
        decode_upload(data, "photo.png", ServingConfig(max_image_bytes=100))
    width, height = Image.open(photo).size
    with pytest.raises(UploadTooLarge, match=rf"{width}x{height} pixels, over serving.max_image_pixels \(50\)"):
        decode_upload(data, "photo.png", ServingConfig(max_image_pixels=50))
    with pytest.raises(ImageEmotionError, match=r"^holiday.jpg: not an image PIL can decode"):
        decode_upload(broken.read_bytes(), "holiday.jpg", ServingConfig())


@pytest.fixture
def server(demo):
    loaded = demo[0]
    httpd = serve(loaded, ServingConfig(max_image_bytes=200_000), port=0, k=4)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _post(url: str, data: bytes, name: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/analyze", data=data, headers={"X-File-Name": name}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_server_answers_json_and_refuses_a_too_large_body_before_reading_it(server, demo):
    _, _, photo, broken = demo
    status, answer = _post(server, photo.read_bytes(), "photo.png")
    assert status == 200 and answer["file"] == "photo.png" and len(answer["neighbours"]["items"]) == 4
    undecodable = "holiday.jpg: not an image PIL can decode (JPEG, PNG, BMP, GIF, TIFF, WebP); replace or remove it"
    assert _post(server, broken.read_bytes(), "holiday.jpg") == (400, {"error": undecodable})
    status, answer = _post(server, b"\0" * 300_000, "huge.png")
    assert status == 413 and answer["error"].startswith("huge.png: 300000 bytes, over serving.max_image_bytes")
    with urllib.request.urlopen(f"{server}/", timeout=30) as response:
        page = response.read().decode()
    assert '<input id="file" type="file"' in page and "http://" not in page and "https://" not in page


@needs_chromium
def test_the_page_in_chromium_shows_an_uploads_answer_and_a_bad_files_message(server, demo):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, _, photo, broken = demo
    with chromium() as driver:
        driver.get(server)
        wait = WebDriverWait(driver, 120)
        driver.find_element(By.ID, "file").send_keys(str(photo))
        wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
        bars = driver.find_elements(By.CSS_SELECTOR, ".bar-row")
        assert len(bars) == 8 and driver.find_element(By.ID, "label").text.split()[0] in {
            b.get_attribute("data-emotion") for b in bars
        }
        widths = [float(b.find_element(By.CSS_SELECTOR, ".bar").value_of_css_property("width")[:-2]) for b in bars]
        assert widths == sorted(widths, reverse=True) and widths[0] > 0  # longest bar first: the label's
        overlay = driver.find_element(By.ID, "overlay")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) > 100
        assert len(driver.find_elements(By.CSS_SELECTOR, ".neighbour img")) == 4
        assert len(driver.find_elements(By.CSS_SELECTOR, ".generated-row")) == 2
        assert "trained on the embedded synthetic images" in driver.find_element(By.ID, "warnings").text
        assert driver.find_element(By.ID, "error").is_displayed() is False
        shot = screenshot(driver, "demo")

        driver.find_element(By.ID, "file").send_keys(str(broken))
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        message = driver.find_element(By.ID, "error").text
        assert (
            message == "error: holiday.jpg: not an image PIL can decode (JPEG, PNG, BMP, GIF, TIFF, WebP); "
            "replace or remove it"
        )
        assert driver.find_element(By.ID, "result").is_displayed() is False
        screenshot(driver, "demo_bad_file")
    assert Image.open(shot).size[0] >= 1000


def test_the_demo_command_refuses_to_start_without_any_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent.db'}")
    assert main(["demo", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "emotion: not available: no model:" in err
    assert err.strip().splitlines()[-1] == (
        "error: no model to serve: run `dvc repro` first (or register models in the tracking store)"
    )
