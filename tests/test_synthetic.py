"""The synthetic dataset: byte-identical for a seed, balanced classes with votes favouring the true class, each
class's motif drawn inside its annotated boxes, and bad settings refused naming the key."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from image_emotion.config import SyntheticConfig
from image_emotion.data.emotions import MIKELS8
from image_emotion.data.synthetic import SHAPES, class_motif, generate, read_objects, render_image
from image_emotion.errors import ConfigError


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = SyntheticConfig.one_set(num_images=16, image_size=64, seed=3)
    a, b = generate(tmp_path / "a", cfg), generate(tmp_path / "b", cfg)
    c = generate(tmp_path / "c", SyntheticConfig.one_set(num_images=16, image_size=64, seed=4))
    assert _digest(a) == _digest(b) != _digest(c)


def test_annotations_are_balanced_with_votes_and_boxes_inside(tmp_path):
    cfg = SyntheticConfig.one_set(num_images=32, image_size=96, seed=0, votes_per_image=20)
    root = generate(tmp_path / "emb", cfg)
    ann = pd.read_csv(root / "annotations.csv")
    assert ann["label"].value_counts().to_dict() == dict.fromkeys(MIKELS8.labels, 4)
    for votes, boxes in zip(ann["votes"].map(json.loads), ann["boxes"].map(json.loads), strict=True):
        assert sum(votes) == 20 and len(votes) == 8
        assert 1 <= len(boxes) <= 2
        for x1, y1, x2, y2 in boxes:
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
            area = (x2 - x1) * (y2 - y1) / 96**2
            assert 0.04 <= area <= 0.18
    # the true class has the most votes for most images (agreement >= 0.45)
    top = [MIKELS8.labels[int(np.argmax(json.loads(v)))] for v in ann["votes"]]
    assert np.mean(np.array(top) == ann["label"].to_numpy()) > 0.8


@pytest.mark.parametrize("label", MIKELS8.labels)
def test_motif_colour_sits_inside_the_boxes(label):
    rng = np.random.default_rng(0)
    img, boxes, _ = render_image(rng, label, 128)
    _, colour = class_motif(label)
    arr = np.asarray(img).astype(int)
    close = np.abs(arr - np.array(colour)).sum(axis=2) < 40
    inside = np.zeros_like(close)
    for x1, y1, x2, y2 in boxes:
        inside[int(y1) : int(y2), int(x1) : int(x2)] = True
    # the striped motif is the class colour in its box; outside, the colour is at most background noise
    assert close[inside].mean() > 0.1 and close[inside].mean() > 2 * close[~inside].mean()


def test_motifs_differ_per_class():
    motifs = {class_motif(label) for label in MIKELS8.labels}
    assert len(motifs) == 8


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        (
            {"sets": {"main": {"num_images": 4, "seed": 0}}},
            "sets.main.num_images: Input should be greater than or equal to 16, got 4",
        ),
        ({"image_size": 16}, "image_size: Input should be greater than or equal to 64, got 16"),
        ({"votes_per_image": 0}, "votes_per_image: Input should be greater than or equal to 1, got 0"),
    ],
)
def test_bad_config(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        SyntheticConfig(**kw)


def test_every_object_is_annotated_with_its_shape_for_the_object_pretraining(tmp_path):
    root = generate(tmp_path / "objects", SyntheticConfig.one_set(num_images=16, image_size=96, seed=5))
    rows = read_objects(root)
    ann = pd.read_csv(root / "annotations.csv")
    assert [p for p, _ in rows] == list(ann["path"])
    for (_, objects), label, boxes in zip(rows, ann["label"], ann["boxes"].map(json.loads), strict=True):
        shape, _ = class_motif(label)
        motif_class = 1 + SHAPES.index(shape)
        assert 3 + len(boxes) <= len(objects) <= 5 + len(boxes)  # 3-5 distractors plus the motifs
        assert [o[:4] for o in objects[-len(boxes) :]] == boxes  # the motifs, drawn last, with their boxes
        assert all(o[4] == motif_class for o in objects[-len(boxes) :])
        assert all(1 <= o[4] <= len(SHAPES) and o[0] < o[2] <= 96 and o[1] < o[3] <= 96 for o in objects)


def test_a_set_that_is_not_configured_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"synthetic\.sets has no set 'regions'; defined: main"):
        generate(tmp_path / "x", SyntheticConfig.one_set(num_images=16), "regions")
