"""``image-emotion retrieve`` and the served retrieval model (seed 002) on a tiny random-init model and 16 synthetic
images: a query that is in the index finds itself first, the JSON and table outputs carry k neighbours, a folder
searched with ``--collection`` skips its bad files, a bad query is one line naming it, and the MLflow pyfunc answers
as the in-process predictor does."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny import tiny_retrieval_model

from image_emotion.cli import main
from image_emotion.config import ServingConfig
from image_emotion.data.emotions import MIKELS8
from image_emotion.data.images import load_image
from image_emotion.tracking.pyfunc import encode_image_file
from image_emotion.tracking.retrieval_pyfunc import RetrievalPredictor, log_retrieval_model

SIZE = 64

SYNTHETIC_WARNING = "warning: this model was trained on the embedded synthetic images, not real photos"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model path, index dir, image paths, labels): a tiny model and the index of 16 synthetic images."""
    return tiny_retrieval_model(tmp_path_factory.mktemp("retrieve"), size=SIZE)


def _retrieve(setup, *args: str) -> list[str]:
    model_path, index_dir, _, _ = setup
    return ["retrieve", *args, "--model", str(model_path), "--index", str(index_dir)]


def test_a_query_in_the_index_finds_itself_first(setup, capsys):
    _, _, paths, labels = setup
    query = paths[3]
    assert main([*_retrieve(setup, str(query), "--k", "6"), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)[str(query)]
    found = answer["neighbours"]
    assert [x["rank"] for x in found] == [1, 2, 3, 4, 5, 6]
    assert found[0]["id"] == str(query) and found[0]["distance"] < 1e-4
    assert found[0]["label"] == MIKELS8.labels[labels[3]]  # the index's (true) label, not a prediction
    distances = [x["distance"] for x in found]
    assert distances == sorted(distances) and distances[1] > 1e-4  # other images are farther
    assert len({x["id"] for x in found}) == 6 and {x["id"] for x in found} <= {str(p) for p in paths}
    assert answer["label"] in MIKELS8.labels and answer["polarity"] == MIKELS8.polarity(answer["label"])


def test_json_and_table_outputs(setup, capsys):
    _, _, paths, _ = setup
    queries = [str(paths[0]), str(paths[7])]
    assert main([*_retrieve(setup, *queries, "--k", "4"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert sorted(result) == sorted(queries)
    for query, answer in result.items():
        assert len(answer["neighbours"]) == 4 and answer["neighbours"][0]["id"] == query
        assert set(answer["neighbours"][0]) == {"rank", "id", "label", "distance"}

    assert main(_retrieve(setup, *queries, "--k", "4")) == 0
    out = capsys.readouterr().out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)  # the table, not JSON (main prints nothing more)
    for query, answer in result.items():
        block = re.split(r"\n\s*\n", out.split(f"{query}: ")[1])[0].splitlines()  # kfp.local may indent prints
        assert block[0].strip() == f"{answer['label']} ({answer['polarity']})"
        assert block[1].split() == ["rank", "distance", "label", "path"]
        rows = [line.split() for line in block[2:]]
        assert len(rows) == 4
        assert [r[0] for r in rows] == ["1", "2", "3", "4"]
        assert [r[3] for r in rows] == [x["id"] for x in answer["neighbours"]]
        assert [r[2] for r in rows] == [x["label"] for x in answer["neighbours"]]


def test_a_collection_folder_skips_bad_files_and_answers_from_it_only(setup, capsys, tmp_path):
    _, _, paths, _ = setup
    collection = tmp_path / "photos"
    (collection / "sub").mkdir(parents=True)
    kept = []
    for i, p in enumerate(paths[:5]):
        dest = collection / ("sub" if i % 2 else "") / f"img_{i}{'.PNG' if i == 4 else '.png'}"
        shutil.copy(p, dest)
        kept.append(str(dest))
    (collection / "broken.png").write_bytes(paths[5].read_bytes()[:200])  # truncated
    (collection / "notes.jpg").write_text("not an image")
    (collection / "readme.txt").write_text("ignored: not an image name")
    query = paths[2]  # the same pixels as img_2.png in the collection
    assert main([*_retrieve(setup, str(query), "--k", "10", "--collection", str(collection)), "--json"]) == 0
    captured = capsys.readouterr()
    found = json.loads(captured.out)[str(query)]["neighbours"]
    assert sorted(x["id"] for x in found) == sorted(kept)  # k is capped at the 5 good images
    assert found[0]["id"] == str(collection / "img_2.png") and found[0]["distance"] < 1e-4
    model_line, synthetic, *warnings = captured.err.strip().splitlines()
    assert model_line == f"model: {setup[0]}" and len(warnings) == 2  # the index is not loaded for a folder
    assert synthetic.startswith(SYNTHETIC_WARNING)  # once, before the answers
    assert any("broken.png" in w for w in warnings) and any("notes.jpg" in w for w in warnings)
    assert all(w.startswith("warning: ") for w in warnings)

    predictor = RetrievalPredictor(setup[0], device="cpu")
    _, predicted = predictor.embed_and_classify([load_image(p) for p in sorted(kept)])
    by_id = {x["id"]: x["label"] for x in found}  # collection labels are the classifier's predictions
    assert [by_id[k] for k in sorted(kept)] == [MIKELS8.labels[c] for c in predicted]

    assert main(_retrieve(setup, str(query), "--k", "2", "--collection", str(collection))) == 0
    assert "predicted" in capsys.readouterr().out.splitlines()[1].split()


def test_bad_query_and_missing_model_are_one_line_errors(setup, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    missing_model = tmp_path / "none" / "model.pt"
    # the bad query is a failure naming it, as in predict and describe, and no model is needed to say so
    assert main(["retrieve", str(bad), "--model", str(missing_model)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"failed: {bad}: corrupt or truncated image (Truncated File Read); re-copy or remove it"]

    good = str(setup[2][0])
    assert main(["retrieve", good, "--model", str(missing_model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing_model) in err[0] and "dvc repro" in err[0]
    assert main(["retrieve", good, "--model", str(setup[0]), "--index", str(tmp_path / "no_index")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_index" in err[0] and "build-index" in err[0]
    assert main(["retrieve", good, "--model-uri", "models:/absent@champion"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # MLflow's own INFO lines come first
    assert err[-1].startswith("error: --model-uri models:/absent@champion: cannot load it (Registered Model with")


def test_the_predictor_names_a_bad_row(setup):
    model_path, index_dir, paths, _ = setup
    predictor = RetrievalPredictor(model_path, index_dir, device="cpu")
    frame = pd.DataFrame({"image": [encode_image_file(paths[0]), "bm90IGFuIGltYWdl"]})  # base64 of "not an image"
    with pytest.raises(ValueError, match="row 1"):
        predictor.predict(frame)
    with pytest.raises(ValueError, match="row 0: 'image' is not valid base64"):
        predictor.predict(pd.DataFrame({"image": ["%%%"]}))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:``mlflow.models.utils.validate_serving_input`` is deprecated:FutureWarning")
def test_the_logged_pyfunc_answers_as_the_predictor(setup, tmp_path, monkeypatch, capsys):
    import mlflow
    from mlflow.models import Model, validate_serving_input

    import image_emotion

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    model_path, index_dir, paths, _ = setup
    example = pd.DataFrame({"image": [encode_image_file(p) for p in paths[:2]]})
    with mlflow.start_run():
        info = log_retrieval_model(
            mlflow, model_path, index_dir, example, [Path(image_emotion.__file__).parent], ["torch", "mlflow"],
            ServingConfig(max_k=4),
        )  # fmt: skip
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    frame = pd.DataFrame({"image": [encode_image_file(paths[9]), encode_image_file(paths[4])]})
    served = loaded.predict(frame, params={"k": 3})
    local = RetrievalPredictor(model_path, index_dir, device="cpu").predict(frame, k=3)
    assert list(served.columns) == ["label", "polarity", "neighbours"] and len(served) == 2
    assert served[["label", "polarity"]].equals(local[["label", "polarity"]])
    with pytest.raises(Exception, match=r"k = 5 neighbours: over serving\.max_k = 4"):  # the logged limits hold
        loaded.predict(frame, params={"k": 5})
    assert len(json.loads(loaded.predict(frame)["neighbours"][0])) == 4  # no k: 5, capped at max_k
    for s, x in zip(served["neighbours"], local["neighbours"], strict=True):
        s, x = json.loads(s), json.loads(x)
        assert len(s) == 3
        assert [(n["rank"], n["id"], n["label"]) for n in s] == [(n["rank"], n["id"], n["label"]) for n in x]
        assert np.allclose([n["distance"] for n in s], [n["distance"] for n in x], atol=1e-5)
    assert json.loads(served["neighbours"][0])[0]["id"] == str(paths[9])

    serving_input = Model.load(info.model_uri).get_serving_input(mlflow.artifacts.download_artifacts(info.model_uri))
    assert serving_input is not None
    answer = validate_serving_input(info.model_uri, serving_input)  # its default k (5) capped at max_k
    assert len(answer) == 2 and [len(json.loads(n)) for n in answer["neighbours"]] == [4, 4]

    capsys.readouterr()
    assert main(["retrieve", str(paths[9]), "--k", "2", "--model-uri", info.model_uri, "--json"]) == 0
    via_cli = json.loads(capsys.readouterr().out)[str(paths[9])]
    assert via_cli["label"] == local["label"][0]
    assert [n["id"] for n in via_cli["neighbours"]] == [n["id"] for n in json.loads(local["neighbours"][0])[:2]]

    # with no model named, the registry's champion answers (the rule predict and describe follow too)
    version = mlflow.register_model(info.model_uri, "image-emotion-retrieval").version
    mlflow.MlflowClient().set_registered_model_alias("image-emotion-retrieval", "champion", version)
    params = tmp_path / "none.yaml"  # no params file: the defaults, whose store is $MLFLOW_TRACKING_URI
    assert main(["retrieve", str(paths[9]), "--k", "2", "--params", str(params), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[str(paths[9])] == via_cli
    assert captured.err.strip().splitlines()[-2] == "model: models:/image-emotion-retrieval@champion"
    assert captured.err.strip().splitlines()[-1].startswith(SYNTHETIC_WARNING)  # the registered model's own record
    # files named on the command line win over the champion
    assert (
        main(
            ["retrieve", str(paths[9]), "--params", str(params), "--model", str(model_path), "--index", str(index_dir)]
        )
        == 0
    )
    assert capsys.readouterr().err.strip().splitlines()[-2] == f"model: {model_path} + {index_dir}"
    # and a folder is searched with the served model's embedding as with the local one
    folder = tmp_path / "folder"
    folder.mkdir()
    for p in paths[:3]:
        shutil.copy(p, folder / p.name)
    assert main(["retrieve", str(paths[1]), "--model-uri", info.model_uri, "--collection", str(folder), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)[str(paths[1])]["neighbours"]
    assert found[0]["id"] == str(folder / paths[1].name) and len(found) == 3


def test_grid_draws_each_query_with_its_neighbours_framed_by_agreement(setup, capsys, tmp_path):
    from PIL import Image

    from image_emotion.data.emotions import get_label_set
    from image_emotion.figures import OTHER, POLARITY, SAME, TILE

    _, _, paths, _ = setup
    queries = [str(paths[0]), str(paths[3])]
    grid = tmp_path / "grid.png"
    assert main([*_retrieve(setup, *queries, "--k", "3", "--grid", str(grid)), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    image = Image.open(grid).convert("RGB")
    assert image.size == (4 * (TILE + 8), 2 * (TILE + 24))  # a row a query: the query and its 3 neighbours
    for row, answer in enumerate(result.values()):
        assert image.getpixel((1, row * (TILE + 24) + 1)) == (255, 255, 255)  # the query itself is not framed
        for col, n in enumerate(answer["neighbours"], start=1):
            frame = image.getpixel((col * (TILE + 8) + 1, row * (TILE + 24) + 1))
            side = get_label_set("mikels8").polarity(n["label"]) == answer["polarity"]
            assert frame == (SAME if n["label"] == answer["label"] else POLARITY if side else OTHER)
