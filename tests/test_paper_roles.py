"""The paper's data flow on the real datasets' published layouts: `dvc repro` of the whole graph with the detector
fine-tuned on EmotionROI's boxes, the classifier trained on FI, and transfer to ArtPhoto and Abstract, each
dataset a tiny fixture in its published layout with bad files that `data.on_error: skip` leaves out."""

import json
import os
import shutil
import subprocess

import pandas as pd
import pytest
import torch
import yaml
from layouts import make_abstract, make_artphoto, make_emotion6, make_emotionroi, make_fi
from tiny import tiny_config

from image_emotion.cli import main

pytestmark = pytest.mark.e2e


def _break(path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:60])
    else:  # a text file under an image's name
        path.write_text("not an image")


@pytest.fixture(scope="module")
def paper_project(tmp_path_factory, repo_root):
    """A DVC project whose roles are the published layouts, reproduced once: (root, what `dvc repro` printed)."""
    root = tmp_path_factory.mktemp("paper") / "project"
    data = root.parent / "datasets"
    emotionroi = make_emotionroi(data / "EmotionROI", per_class=6)
    fi = make_fi(data / "FI", per_class=10)
    artphoto = make_artphoto(data / "ArtPhoto", per_class=5)
    abstract = make_abstract(data / "Abstract", per_class=5)
    emotion6 = make_emotion6(data / "Emotion6", per_class=5, neutral=5)
    _break(emotionroi / "images/fear/2.jpg", "truncated")
    _break(fi / "emotion_dataset/awe/awe_4.JPG", "truncated")
    _break(fi / "emotion_dataset/fear/fear_5.png", "text")
    _break(artphoto / "testImages_artphoto/anger_2.jpg", "text")
    _break(abstract / "testImages_abstract/abstract_0007.jpg", "truncated")

    root.mkdir()
    shutil.copy(repo_root / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(repo_root / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    config = tiny_config(
        **{
            "detector_data": f"{{dataset: emotionroi, root: {emotionroi}}}",
            "data.dataset": "fi",
            "data.root": fi,
            "data.on_error": "skip",
            "transfer.sets": f"[{{name: artphoto, dataset: artphoto, root: {artphoto}}}, "
            f"{{name: abstract, dataset: abstract, root: {abstract}}}, "
            f"{{name: emotion6, dataset: emotion6, root: {emotion6}}}]",
            "generative.sets": f"[{{name: emotionroi, dataset: emotionroi, root: {emotionroi}}}, "
            f"{{name: emotion6, dataset: emotion6, root: {emotion6}}}]",
            "synthetic.sets": "{objects: {num_images: 16, seed: 2}}",  # COCO's role stays synthetic
            "finetune.max_images": "null",
        }
    )
    (root / "params.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    for args in (["init", "-q"], ["repro"]):
        proc = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc.stdout


def _json(path):
    return json.loads(path.read_text())


def test_every_stage_ran_in_the_papers_roles(paper_project):
    root, out = paper_project
    ran = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
    assert sorted(ran) == sorted(
        [
            "make_synthetic", "prepare_detector", "prepare_main", "prepare_transfer@0", "prepare_transfer@1",
            "prepare_transfer@2", "pretrain_objects", "finetune_detector", "extract_main", "extract_transfer@0",
            "extract_transfer@1", "extract_transfer@2", "train_classifier", "transfer_cv@0", "transfer_cv@1",
            "transfer_cv@2", "evaluate", "report", "register", "train_metric", "retrieve", "retrieve_transfer@0",
            "retrieve_transfer@1", "retrieve_transfer@2", "register_metric", "prepare_generative@0",
            "prepare_generative@1", "train_generative", "evaluate_generative", "register_generative",
        ]
    )  # fmt: skip
    assert _json(root / "metrics/objects.json")["images"] == 16  # the synthetic objects set played COCO


def test_bad_files_of_every_dataset_are_skipped_and_listed(paper_project):
    root, _ = paper_project
    expected = {  # role -> (dataset, images loaded, bad files skipped)
        "detector": ("emotionroi", 6 * 6 - 1, ["images/fear/2.jpg"]),
        "main": ("fi", 8 * 10 - 2, ["emotion_dataset/awe/awe_4.JPG", "emotion_dataset/fear/fear_5.png"]),
        "artphoto": ("artphoto", 8 * 5 - 1, ["testImages_artphoto/anger_2.jpg"]),
        "abstract": ("abstract", 8 * 5 - 1, ["testImages_abstract/abstract_0007.jpg"]),
    }
    for role, (dataset, count, bad) in expected.items():
        summary = _json(root / f"metrics/prepare/{role}.json")
        assert (summary["dataset"], summary["num_images"], summary["num_bad"]) == (dataset, count, len(bad)), role
        skipped = pd.read_csv(root / f"data/prepared/{role}/skipped.csv")
        assert sorted(skipped.loc[skipped["bad"] == 1, "path"]) == bad, role


def test_detector_is_fine_tuned_on_emotionroi_with_a_validation_part_of_its_training_list(paper_project):
    root, _ = paper_project
    manifest = pd.read_csv(root / "data/prepared/detector/manifest.csv")
    official_test = {f"images/{emo}/6.jpg" for emo in ("anger", "disgust", "fear", "joy", "sadness", "surprise")}
    assert set(manifest.loc[manifest["split"] == "test", "path"]) == official_test  # the official split kept
    assert (manifest["split"] == "val").sum() >= 1 and (manifest["split"] == "train").sum() >= 20
    detector = _json(root / "metrics/detector.json")
    assert detector["train_images"] == (manifest["split"] == "train").sum()
    assert detector["holdout_split"] == "val" and len(detector["loss_per_epoch"]) == 2


def test_classifier_on_fi_and_transfer_to_artphoto_and_abstract(paper_project):
    root, _ = paper_project
    classifier = _json(root / "metrics/classifier.json")
    assert (classifier["dataset"], classifier["label_set"]) == ("fi", "mikels8")
    assert [r["lambda"] for r in _json(root / "metrics/lambda_sweep.json")] == [0.0, 0.5, 1.0]
    for name in ("artphoto", "abstract", "emotion6"):
        transfer = _json(root / f"metrics/transfer/{name}.json")
        assert (transfer["set"], transfer["dataset"], transfer["folds"]) == (name, name, 5)
        assert len(transfer["accuracy_per_fold"]) == len(transfer["accuracy_2class_per_fold"]) == 5
        # Table 3's two columns: own classes and 2-class, each the mean of its folds
        assert transfer["accuracy_mean"] == pytest.approx(sum(transfer["accuracy_per_fold"]) / 5)
        assert transfer["accuracy_2class_mean"] == pytest.approx(sum(transfer["accuracy_2class_per_fold"]) / 5)
    emotion6 = _json(root / "metrics/transfer/emotion6.json")
    assert emotion6["label_set"] == "emotion6" and emotion6["images_without_polarity"] == 5  # neutral, left out
    assert _json(root / "metrics/transfer/artphoto.json")["images_without_polarity"] == 0
    classifier_paper = classifier["paper_lambda"]
    assert classifier_paper is None  # λ = 0.4 is not in the tiny sweep (0, 0.5, 1)
    evaluation = _json(root / "metrics/evaluate.json")
    assert sorted(evaluation["transfer"]) == ["abstract", "artphoto", "emotion6"]
    assert (
        evaluation["dataset"] == "fi"
        and evaluation["num_test_images"]
        == (pd.read_csv(root / "data/prepared/main/manifest.csv")["split"] == "test").sum()
    )
    assert _json(root / "metrics/register.json")["version"] == 1


def test_a_model_trained_on_fi_answers_without_the_synthetic_data_warning(paper_project, capsys):
    root, _ = paper_project
    head = root / "models/classifier/head.pt"
    assert torch.load(head, map_location="cpu", weights_only=False)["dataset"] == "fi"  # the head says what it learned
    photo = sorted((root.parent / "datasets/FI/emotion_dataset/amusement").iterdir())[0]
    status = main(["predict", str(photo), "--detector", str(root / "models/detector/detector.pt"), "--head", str(head)])
    err = capsys.readouterr().err
    assert status == 0 and err.startswith("model: ") and "warning" not in err


def test_one_generative_model_answers_fi_emotionroi_and_emotion6(paper_project):
    root, _ = paper_project
    trained = _json(root / "metrics/generative_train.json")
    assert trained["emotion_models"] == ["mikels8", "binary", "ekman6", "emotion6"]
    train = {
        name: pd.read_csv(root / path / "manifest.csv").query("split == 'train'")
        for name, path in (
            ("fi", "data/prepared/main"),
            ("emotionroi", "data/prepared/generative/emotionroi"),
            ("emotion6", "data/prepared/generative/emotion6"),
        )
    }
    polar = sum(len(t) for t in train.values()) - int((train["emotion6"]["label"] == "neutral").sum())
    assert trained["train_examples"] == {  # Emotion6's neutral images have no positive / negative view
        "mikels8": len(train["fi"]), "binary": polar, "ekman6": len(train["emotionroi"]),
        "emotion6": len(train["emotion6"]),
    }  # fmt: skip
    evaluation = _json(root / "metrics/generative.json")
    assert evaluation["decoding"]["valid"] == 1.0 and set(evaluation["emotion_models"]) == set(
        trained["emotion_models"]
    )


def test_report_sets_the_papers_figures_beside_the_datasets_it_has_and_flags_the_one_it_lacks(paper_project):
    root, _ = paper_project
    md = (root / "reports/paper.md").read_text()
    banner = next(line for line in md.splitlines() if "Not the paper's data" in line)
    assert "transfer: emotion6 = emotion6 (" in banner  # Emotion6 is not among the paper's transfer sets
    assert "classifier (main)" not in banner and "detector" not in banner  # FI and EmotionROI are the paper's
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in md.splitlines() if line.startswith("| ")}
    artphoto = _json(root / "metrics/transfer/artphoto.json")
    assert rows["artphoto (artphoto)"][3:5] == [
        f"{100 * artphoto['accuracy_mean']:.1f} ± {100 * artphoto['accuracy_std']:.1f}",
        "74.58",
    ]
    assert rows["abstract (abstract)"][4] == "70.77" and rows["emotion6 (emotion6)"][4] == "—"
