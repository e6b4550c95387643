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


def test_labels_are_the_top_vote_with_boxes_inside(tmp_path):
    cfg = SyntheticConfig.one_set(num_images=64, image_size=96, seed=0, votes_per_image=20)
    root = generate(tmp_path / "emb", cfg)
    ann = pd.read_csv(root / "annotations.csv")
    for label, votes, boxes in zip(
        ann["label"], ann["votes"].map(json.loads), ann["boxes"].map(json.loads), strict=True
    ):
        assert sum(votes) == 20 and len(votes) == 8
        assert votes[MIKELS8.index(label)] == max(votes)  # FI's rule: the single label is the top vote
        assert 1 <= len(boxes) <= 2
        for x1, y1, x2, y2 in boxes:
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
            area = (x2 - x1) * (y2 - y1) / 96**2
            assert 0.04 <= area <= 0.18
    # drawn around 8 emotions x 8 images; top votes move a few labels to a neighbour, none disappears
    counts = ann["label"].value_counts()
    assert set(counts.index) == set(MIKELS8.labels) and counts.max() <= 14


def _motif_label(shape_class: int, box, image) -> str:
    """The emotion whose motif colour dominates ``box`` of ``image`` (the motif's stripes are the class hue)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    crop = np.asarray(image)[y1:y2, x1:x2].reshape(-1, 3).astype(int)
    candidates = [x for x in MIKELS8.labels if 1 + SHAPES.index(class_motif(x)[0]) == shape_class]
    return max(candidates, key=lambda x: (np.abs(crop - np.array(class_motif(x)[1])).sum(1) < 40).mean())


def test_ambiguous_images_show_two_neighbouring_emotions_and_split_the_votes(tmp_path):
    from PIL import Image

    from image_emotion.data.emotions import wheel_steps

    cfg = SyntheticConfig.one_set(num_images=80, image_size=128, seed=1, ambiguous_fraction=0.5)
    root = generate(tmp_path / "emb", cfg)
    ann = pd.read_csv(root / "annotations.csv")
    ambiguous = ann[ann["ambiguous"] == 1]
    assert 25 <= len(ambiguous) <= 55  # about half of 80
    label_is_larger_motif, top_two_are_the_motifs = [], []
    for _, row in ambiguous.iterrows():
        objects = json.loads(row["objects"])[-2:]  # the two motifs, drawn last
        image = Image.open(root / row["path"])
        shown = [_motif_label(int(o[4]), o[:4], image) for o in objects]
        assert wheel_steps(*shown) == 1, shown  # neighbours on Mikels' wheel
        votes = np.array(json.loads(row["votes"]))
        top_two = {MIKELS8.labels[i] for i in np.argsort(-votes, kind="stable")[:2]}
        top_two_are_the_motifs.append(top_two == set(shown))
        areas = [(o[2] - o[0]) * (o[3] - o[1]) for o in objects]
        label_is_larger_motif.append(row["label"] == shown[int(np.argmax(areas))])
        assert row["label"] in shown
    # viewers split between the two motifs, by their areas: the label is noisy, but leans to the larger one
    assert np.mean(top_two_are_the_motifs) > 0.8
    assert 0.55 < np.mean(label_is_larger_motif) < 0.95
    clear = ann[ann["ambiguous"] == 0]
    assert all(len(json.loads(b)) in (1, 2) for b in clear["boxes"])


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
    assert close[inside].mean() > 0.08 and close[inside].mean() > 2 * close[~inside].mean()


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
        ({"ambiguous_fraction": 1.5}, "ambiguous_fraction: Input should be less than or equal to 1, got 1.5"),
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
    rows_ann = zip(rows, ann["label"], ann["boxes"].map(json.loads), ann["ambiguous"], strict=True)
    for (_, objects), label, boxes, ambiguous in rows_ann:
        assert 3 + len(boxes) <= len(objects) <= 5 + len(boxes)  # 3-5 distractors plus the motifs
        assert [o[:4] for o in objects[-len(boxes) :]] == boxes  # the motifs, drawn last, with their boxes
        if not ambiguous:  # an ambiguous image's motifs are its label's and a neighbour's (tested above)
            motif_class = 1 + SHAPES.index(class_motif(label)[0])
            assert all(o[4] == motif_class for o in objects[-len(boxes) :])
        assert all(1 <= o[4] <= len(SHAPES) and o[0] < o[2] <= 96 and o[1] < o[3] <= 96 for o in objects)


def test_a_set_that_is_not_configured_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"synthetic\.sets has no set 'regions'; defined: main"):
        generate(tmp_path / "x", SyntheticConfig.one_set(num_images=16), "regions")
