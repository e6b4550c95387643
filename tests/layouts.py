"""Tiny copies of each public dataset's published on-disk layout (DESIGN.md §3), for loader tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

MIKELS = ("amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness")
EKMAN = ("anger", "disgust", "fear", "joy", "sadness", "surprise")


def save_image(path: Path, seed: int, size: tuple[int, int] = (40, 32), fmt: str | None = None) -> Path:
    """A small random RGB image at ``path`` (format from the suffix unless ``fmt``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def make_fi(root: Path, per_class: int = 3) -> Path:
    """``emotion_dataset/<emotion>/<emotion>_<id>.jpg`` with mixed .jpg/.JPG/.png."""
    for c, emo in enumerate(MIKELS):
        for i in range(per_class):
            ext = (".jpg", ".JPG", ".png")[i % 3]
            save_image(
                root / "emotion_dataset" / emo / f"{emo}_{i}{ext}", c * 100 + i, fmt="PNG" if ext == ".png" else "JPEG"
            )
    return root


def make_iaps(root: Path, per_class: int = 5) -> Path:
    """``IAPSsubset/<emotion>/<id>.jpg``."""
    for c, emo in enumerate(MIKELS):
        for i in range(per_class):
            save_image(root / "IAPSsubset" / emo / f"{1000 + c * 10 + i}.jpg", c * 100 + i)
    return root


def make_artphoto(root: Path, per_class: int = 5) -> Path:
    """Flat ``testImages_artphoto/<prefix>_<n>.jpg`` with ``sad`` prefix and stray files."""
    base = root / "testImages_artphoto"
    for c, emo in enumerate(MIKELS):
        prefix = "sad" if emo == "sadness" else emo
        for i in range(per_class):
            save_image(base / f"{prefix}_{i + 1}.jpg", c * 100 + i)
    (base / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (base / "readme.rtf").write_text("{\\rtf1 ArtPhoto}")
    return root


ABSTRACT_HEADER = "'ImageName','Amusement','Anger','Awe','Content','Disgust','Excitement','Fear','Sad'"


def make_abstract(root: Path, per_class: int = 5) -> Path:
    """``testImages_abstract/`` + quoted ``ABSTRACT_groundTruth.csv``; one tied and one vote-less image."""
    base = root / "testImages_abstract"
    lines = [ABSTRACT_HEADER]
    n = 0
    for c in range(8):
        for _ in range(per_class):
            n += 1
            votes = [0] * 8
            votes[c] = 5
            votes[(c + 1) % 8] = 2
            name = f"abstract_{n:04d}.jpg"
            save_image(base / name, n)
            lines.append(",".join([f"'{name}'", *map(str, votes)]))
    for name, votes in (("abstract_tie.jpg", [3, 3, 0, 0, 0, 0, 0, 1]), ("abstract_none.jpg", [0] * 8)):
        save_image(base / name, 999)
        lines.append(",".join([f"'{name}'", *map(str, votes)]))
    (base / "ABSTRACT_groundTruth.csv").write_text("\n".join(lines) + "\n")
    return root


def make_emotionroi(root: Path, per_class: int = 4) -> Path:
    """``images/<emo>/<n>.jpg``, ``ground_truth/<emo>/<n>.jpg`` heat maps, official split files."""
    train, test = [], []
    for c, emo in enumerate(EKMAN):
        for i in range(per_class):
            save_image(root / "images" / emo / f"{i + 1}.jpg", c * 100 + i, size=(64, 48))
            heat = np.zeros((48, 64), dtype=np.uint8)
            heat[10:30, 20 + i : 44 + i] = 255  # one blob: box [20+i, 10, 44+i, 30]
            (root / "ground_truth" / emo).mkdir(parents=True, exist_ok=True)
            Image.fromarray(heat).save(root / "ground_truth" / emo / f"{i + 1}.jpg", quality=100)
            (train if i < per_class - 1 else test).append(f"{emo}/{i + 1}.jpg")
    split = root / "training_testing_split"
    split.mkdir(parents=True)
    (split / "training.txt").write_text("\n".join(train) + "\n")
    (split / "testing.txt").write_text("\n".join(test) + "\n")
    return root


EMOTION6_CLASSES = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")


def make_emotion6(root: Path, per_class: int = 4, neutral: int = 0) -> Path:
    """``images/<emo>/<n>.jpg`` + tab-separated ``ground_truth.txt`` with a header; ``neutral`` images whose
    top probability is neutral (no polarity)."""
    lines = [
        "[image_filename]\t[valence]\t[arousal]\t[prob. anger]\t[prob. disgust]\t[prob. fear]\t"
        "[prob. joy]\t[prob. sadness]\t[prob. surprise]\t[prob. neutral]"
    ]
    for c, emo in enumerate(EKMAN):
        for i in range(per_class):
            save_image(root / "images" / emo / f"{i + 1}.jpg", c * 100 + i)
            probs = [0.05] * 7
            probs[c] = 0.7
            lines.append("\t".join([f"{emo}/{i + 1}.jpg", "5.1", "4.2", *(f"{p:.2f}" for p in probs)]))
    for i in range(neutral):
        save_image(root / "images" / "neutral" / f"{i + 1}.jpg", 900 + i)
        probs = [0.05] * 6 + [0.7]
        lines.append("\t".join([f"neutral/{i + 1}.jpg", "5.0", "3.0", *(f"{p:.2f}" for p in probs)]))
    (root / "ground_truth.txt").write_text("\n".join(lines) + "\n")
    return root


def make_twitter(root: Path, n: int = 20) -> Path:
    """``images/<n>.jpg`` + ``{five,four,three}_agree.txt`` (``name label`` lines)."""
    rows = []
    for i in range(n):
        save_image(root / "images" / f"{i + 1}.jpg", i)
        rows.append(f"{i + 1}.jpg {i % 2}")
    for level, k in (("five", n // 2), ("four", 3 * n // 4), ("three", n)):
        (root / f"{level}_agree.txt").write_text("\n".join(rows[:k]) + "\n")
    return root


EMOSET_INFO_ORDER = ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")
EMOSET_SCENES = ("beach", "cemetery", "bakery/shop", "stage")
EMOSET_OBJECTS = ("Balloon", "Skull", "Person", "Cake")
EMOSET_FACES = ("happy", "sad", "angry")
EMOSET_ACTIONS = ("celebrating", "crying", "boxing ")


def emoset_split(i: int) -> str:
    """The official split of the ``i``-th image of each class in ``make_emoset``: 2 of every 4 train, 1 val, 1 test."""
    return ("train", "train", "val", "test")[i % 4]


def emoset_annotation(c: int, i: int) -> dict[str, Any]:
    """The attributes ``make_emoset`` writes for image ``i`` of Mikels class ``c``; image 1 of each class has
    none but brightness and colorfulness, image 2 has no brightness (absent keys: not annotated)."""
    ann: dict[str, Any] = {
        "brightness": round(0.1 * ((c + i) % 11), 1),
        "colorfulness": round(1.0 - 0.1 * ((c + 2 * i) % 11), 1),
    }
    if i != 1:
        ann["scene"] = EMOSET_SCENES[(c + i) % len(EMOSET_SCENES)]
        ann["object"] = [EMOSET_OBJECTS[c % 4], EMOSET_OBJECTS[(c + i + 2) % 4]][: 1 + i % 2]
        ann["facial_expression"] = EMOSET_FACES[c % 3]
        ann["human_action"] = EMOSET_ACTIONS[(c + i) % 3]
    if i == 2:
        del ann["brightness"]
    return ann


def make_emoset(root: Path, per_class: int = 4) -> Path:
    """``image/<emotion>/<emotion>_<id>.jpg``, ``annotation/<emotion>/<emotion>_<id>.json``, ``info.json`` and the
    official ``{train,val,test}.json`` lists of ``[emotion, id, image path, annotation path]`` (classes
    interleaved, as the published files are not grouped by class); ``emoset_split`` says which file lists each."""
    splits: dict[str, list[list[str]]] = {"train": [], "val": [], "test": []}
    for i in range(per_class):
        for c, emo in enumerate(MIKELS):
            image_id = f"{emo}_{c * 1000 + i}"
            image, annotation = f"image/{emo}/{image_id}.jpg", f"annotation/{emo}/{image_id}.json"
            save_image(root / image, c * 100 + i)
            (root / annotation).parent.mkdir(parents=True, exist_ok=True)
            (root / annotation).write_text(json.dumps(emoset_annotation(c, i)))
            splits[emoset_split(i)].append([emo, image_id, image, annotation])
    for name, entries in splits.items():
        (root / f"{name}.json").write_text(json.dumps(entries, indent=4))

    def maps(labels: list[Any]) -> dict[str, dict[str, Any]]:
        return {"label2idx": {str(v): k for k, v in enumerate(labels)}, "idx2label": dict(enumerate(labels))}

    steps = [round(0.1 * k, 1) for k in range(11)]
    info = {
        "emotion": maps(list(EMOSET_INFO_ORDER)),
        "brightness": maps(steps),
        "colorfulness": maps(steps),
        "scene": maps(sorted(EMOSET_SCENES)),
        "object": maps(sorted(EMOSET_OBJECTS)),
        "facial_expression": maps(sorted(EMOSET_FACES)),
        "human_action": maps(sorted(EMOSET_ACTIONS)),
    }
    (root / "info.json").write_text(json.dumps(info, indent=2))
    return root


LAYOUTS = {
    "fi": make_fi,
    "iaps": make_iaps,
    "artphoto": make_artphoto,
    "abstract": make_abstract,
    "emotionroi": make_emotionroi,
    "emotion6": make_emotion6,
    "twitter": make_twitter,
    "emoset": make_emoset,
}
"""Every loader's tiny layout (test_datasets), each prepared end to end (test_prepare.PROTOCOLS)."""
