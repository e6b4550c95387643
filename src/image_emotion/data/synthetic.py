"""The synthetic default dataset (params ``synthetic``): drawn images whose emotion is carried by *regions*.

Why it is a fair test of seed 000's claims (regions beat global features; the emotion distribution helps):

- Each Mikels-8 class has a motif: a shape and a hue (hue = 45 degrees x the class's place on Mikels'
  wheel, so neighbouring emotions look alike, as they are confused alike). One or two motif objects
  (5-14% of the image each) sit at random places, drawn striped *and* outlined - the "emotional
  region"; their boxes are the ground truth for the region detector.
- Backgrounds (gradients, clutter, noise) and 3-5 distractor objects are drawn independently of the class:
  any shape, any class hue, plain, striped or outlined (never both), so every single cue of a motif also
  appears away from it, and global colour/shape statistics are weak evidence of the class.
- 20 simulated viewers vote per image. A *clear* image shows motifs of one emotion: each viewer picks it
  with a per-image agreement in [0.45, 0.9], else a class drawn in proportion to ``1/dis^2`` on the wheel.
  An *ambiguous* image (``ambiguous_fraction`` of them) shows one motif of an emotion and one of its
  neighbour on the wheel; viewers split between the two in proportion to the motifs' areas. As in FI, the
  single label is the top vote (ties broken at random), so on ambiguous images it is noisy, and the vote
  distribution carries what a one-hot label lacks.

A set with ``label_set: ekman6`` (seed 001's second emotion model) draws balanced Ekman emotions, each shown
by the motif of a Mikels emotion that maps onto it (joy: amusement, contentment or excitement; surprise: awe;
the four negative emotions their own), and sums the viewers' Mikels votes into Ekman's six.

Written in a published-like layout: ``images/<id>.png`` and ``annotations.csv`` (``path, label, label_set,
votes, boxes, objects, ambiguous``; votes in the label set's order). Everything follows from the seed: the same params
give the same bytes.
"""

from __future__ import annotations

import colorsys
import csv
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from image_emotion.config import SyntheticConfig
from image_emotion.data.csv_rows import dict_rows
from image_emotion.data.emotions import EKMAN6, MIKELS8, MIKELS_TO_EKMAN, WHEEL_ORDER, mikels_distance_matrix
from image_emotion.errors import ConfigError, DatasetError
from image_emotion.files import atomic_dir

SHAPES = ("circle", "triangle", "square", "star")
ANNOTATIONS = "annotations.csv"


def class_motif(label: str) -> tuple[str, tuple[int, int, int]]:
    """The (shape, RGB colour) that carries ``label``: hue follows the label's place on the wheel."""
    pos = WHEEL_ORDER.index(label)
    r, g, b = colorsys.hsv_to_rgb(pos / len(WHEEL_ORDER), 0.85, 0.95)
    return SHAPES[pos % len(SHAPES)], (int(r * 255), int(g * 255), int(b * 255))


def _polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    """Vertices of ``shape`` inscribed in ``box``; None for shapes PIL draws natively."""
    x1, y1, x2, y2 = box
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    if shape == "triangle":
        return [(cx, y1), (x2, y2), (x1, y2)]
    if shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            r = 1.0 if k % 2 == 0 else 0.45
            pts.append((cx + r * rx * math.cos(a), cy + r * ry * math.sin(a)))
        return pts
    return None


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, fill, outline=None, width: int = 0) -> None:
    poly = _polygon(shape, box)
    if poly is not None:
        draw.polygon(poly, fill=fill, outline=outline, width=width)
    elif shape == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    else:
        draw.rectangle(box, fill=fill, outline=outline, width=width)


def read_objects(root: str | Path) -> list[tuple[str, list[list[float]]]]:
    """``(image path relative to root, [[x1, y1, x2, y2, class], ...])`` of every image of a synthetic set:
    what plays COCO's role (object boxes with categories) for the object pre-training."""
    ann = Path(root) / ANNOTATIONS
    if not ann.is_file():
        raise DatasetError(f"{ann}: not found; the object pre-training reads a synthetic set (make-synthetic)")
    out = []
    for n, row in dict_rows(ann):
        try:
            out.append((row["path"], json.loads(row["objects"])))
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{ann} line {n}: expected an objects column ({exc})") from None
    return out


def _random_box(rng: np.random.Generator, size: int, area_lo: float, area_hi: float):
    """A box covering ``area_lo..area_hi`` of the image, aspect in [0.75, 1.33], fully inside."""
    area = rng.uniform(area_lo, area_hi) * size * size
    aspect = rng.uniform(0.75, 1.33)
    w = min(size - 2, math.sqrt(area * aspect))
    h = min(size - 2, math.sqrt(area / aspect))
    x1 = rng.uniform(0, size - w)
    y1 = rng.uniform(0, size - h)
    return (float(round(x1)), float(round(y1)), float(round(x1 + w)), float(round(y1 + h)))


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Gradient + clutter strokes + pixel noise, independent of the class."""
    c0, c1 = rng.integers(30, 226, size=(2, 3))
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    grad = (1 - t) * c0 + t * c1
    img = Image.fromarray(np.broadcast_to(grad, (size, size, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(8, 20))):
        x1, y1, x2, y2 = rng.integers(0, size, 4)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.line((int(x1), int(y1), int(x2), int(y2)), fill=colour, width=int(rng.integers(1, 4)))
    return img


def _striped(colour: tuple[int, int, int], size: int, phase: int) -> Image.Image:
    """A full-size diagonal stripe pattern in ``colour`` and its darker shade."""
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = ((xx + yy + phase) // 5) % 2 == 0
    dark = np.array(colour) * 0.55
    arr = np.where(stripes[..., None], np.array(colour), dark)
    return Image.fromarray(arr.astype(np.uint8))


def _vote_probabilities(rng: np.random.Generator, shares: dict[int, float]) -> np.ndarray:
    """What one viewer votes, in Mikels-8 order: for each shown emotion (index -> share of the evidence), its
    share times [agreement on it, the rest spread as ``1/dis^2`` around it on the wheel]."""
    agreement = rng.uniform(0.45, 0.9)
    dis = mikels_distance_matrix()
    probs = np.zeros(len(dis))
    for idx, share in shares.items():
        others = 1.0 / dis[idx] ** 2
        others[idx] = 0.0
        probs += share * (1 - agreement) * others / others.sum()
        probs[idx] += share * agreement
    return probs


def top_vote(rng: np.random.Generator, votes: list[int]) -> int:
    """The index of the most voted class; ties broken at random (seeded)."""
    best = np.flatnonzero(np.asarray(votes) == max(votes))
    return int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])


def _box_area(box: list[float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def render_image(
    rng: np.random.Generator, motifs: str | tuple[str, ...], size: int
) -> tuple[Image.Image, list[list[float]], list[list[float]]]:
    """Draw one image showing ``motifs``: a label (one or two motifs of it) or a tuple of labels (one motif
    each, in that order). Returns the image, the motif boxes ``[[x1, y1, x2, y2], ...]`` in drawing order and
    every object drawn, distractors then motifs, as ``[[x1, y1, x2, y2, class], ...]`` (class = 1 + its index
    in ``SHAPES``: the object detector's categories, 0 being the background).

    Distractors carry every single cue of a motif - any shape, any class hue, stripes *or* an outline - but
    never both: only the striped-and-outlined object is the emotional region, and only its shape and hue
    tell the class.
    """
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    outline_width = max(2, size // 64)
    objects: list[list[float]] = []
    for _ in range(int(rng.integers(3, 6))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        _, colour = class_motif(WHEEL_ORDER[int(rng.integers(len(WHEEL_ORDER)))])
        box = _random_box(rng, size, 0.03, 0.10)
        objects.append([box[0], box[1], min(box[2] + 1, size), min(box[3] + 1, size), 1 + SHAPES.index(shape)])
        style = rng.integers(3)  # 0 plain, 1 striped, 2 outlined
        if style == 1:
            mask = Image.new("L", (size, size), 0)
            _draw_shape(ImageDraw.Draw(mask), shape, box, fill=255)
            img.paste(_striped(colour, size, int(rng.integers(0, 10))), (0, 0), mask)
        else:
            outline = (20, 20, 20) if style == 2 else None
            _draw_shape(draw, shape, box, fill=colour, outline=outline, width=outline_width if style == 2 else 0)
    if isinstance(motifs, str):
        motifs = (motifs,) * (1 if rng.random() < 0.6 else 2)
    boxes: list[list[float]] = []
    for label in motifs:
        shape, colour = class_motif(label)
        box = _random_box(rng, size, 0.05, 0.14)
        mask = Image.new("L", (size, size), 0)
        _draw_shape(ImageDraw.Draw(mask), shape, box, fill=255)
        img.paste(_striped(colour, size, int(rng.integers(0, 10))), (0, 0), mask)
        _draw_shape(draw, shape, box, fill=None, outline=(20, 20, 20), width=outline_width)
        boxes.append([box[0], box[1], min(box[2] + 1, size), min(box[3] + 1, size)])
        objects.append([*boxes[-1], 1 + SHAPES.index(shape)])
    noise = rng.normal(0.0, 8.0, (size, size, 3))
    arr = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr), boxes, objects


def draw_example(
    rng: np.random.Generator, emotion: str, size: int, votes_per_image: int, ambiguous: bool
) -> tuple[Image.Image, dict]:
    """One image drawn around ``emotion`` and its annotation row (``label`` = the top vote). An ambiguous
    image also shows a neighbour of ``emotion`` on the wheel; viewers split by the two motifs' areas."""
    if ambiguous:
        pos = WHEEL_ORDER.index(emotion)
        neighbour = WHEEL_ORDER[(pos + (1 if rng.random() < 0.5 else -1)) % len(WHEEL_ORDER)]
        img, boxes, objects = render_image(rng, (emotion, neighbour), size)
        area = [_box_area(b) for b in boxes]
        shares = {MIKELS8.index(emotion): area[0] / sum(area), MIKELS8.index(neighbour): area[1] / sum(area)}
    else:
        img, boxes, objects = render_image(rng, emotion, size)
        shares = {MIKELS8.index(emotion): 1.0}
    votes = [int(v) for v in rng.multinomial(votes_per_image, _vote_probabilities(rng, shares))]
    row = {
        "label": MIKELS8.labels[top_vote(rng, votes)],
        "votes": json.dumps(votes),
        "boxes": json.dumps(boxes),
        "objects": json.dumps(objects),
        "ambiguous": int(ambiguous),
    }
    return img, row


def to_ekman(rng: np.random.Generator, row: dict) -> dict:
    """A Mikels-8 annotation row relabelled in Ekman-6: votes summed along ``MIKELS_TO_EKMAN``, label = top vote."""
    votes = [0] * len(EKMAN6)
    for label, count in zip(MIKELS8.labels, json.loads(row["votes"]), strict=True):
        votes[EKMAN6.index(MIKELS_TO_EKMAN[label])] += count
    return {**row, "label": EKMAN6.labels[top_vote(rng, votes)], "votes": json.dumps(votes)}


def _emotions_to_draw(rng: np.random.Generator, n: int, label_set: str) -> list[str]:
    """``n`` Mikels emotions to draw, balanced over ``label_set``'s classes, in shuffled order."""
    if label_set == "mikels8":
        emotions = [MIKELS8.labels[i % len(MIKELS8)] for i in range(n)]
        rng.shuffle(emotions)
        return emotions
    targets = [EKMAN6.labels[i % len(EKMAN6)] for i in range(n)]
    rng.shuffle(targets)
    sources = {e: [m for m in MIKELS8.labels if MIKELS_TO_EKMAN[m] == e] for e in EKMAN6.labels}
    return [sources[t][int(rng.integers(len(sources[t])))] for t in targets]


def generate(out_dir: str | Path, config: SyntheticConfig, role: str = "main") -> Path:
    """Write the synthetic set of ``role`` (``config.sets``) to ``out_dir`` atomically (images drawn around
    balanced emotions in shuffled order): images, top-vote labels, votes, emotional-region boxes and every
    object's box and category."""
    if role not in config.sets:
        raise ConfigError(f"synthetic.sets has no set {role!r}; defined: {', '.join(config.sets)}")
    spec, size = config.sets[role], config.image_size
    rng = np.random.default_rng(spec.seed)
    emotions = _emotions_to_draw(rng, spec.num_images, spec.label_set)
    ambiguous = rng.random(spec.num_images) < config.ambiguous_fraction
    with atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        rows = []
        for i, (emotion, is_ambiguous) in enumerate(zip(emotions, ambiguous, strict=True)):
            img, row = draw_example(rng, emotion, size, config.votes_per_image, bool(is_ambiguous))
            if spec.label_set == "ekman6":
                row = to_ekman(rng, row)
            rel = f"images/{i:05d}.png"
            img.save(tmp / rel, optimize=False, compress_level=1)
            rows.append({"path": rel, "label_set": spec.label_set, **row})
        with (tmp / ANNOTATIONS).open("w", newline="", encoding="utf-8") as fh:
            fields = ["path", "label", "label_set", "votes", "boxes", "objects", "ambiguous"]
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return Path(out_dir)
