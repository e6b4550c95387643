"""Figures the stages write (PNG, atomically): matplotlib on the file-only Agg backend, and image grids.

- ``pyplot()`` / ``save_figure``: matplotlib, imported on first use (it is slow to import).
- ``tsne_plot``: 2-D t-SNE of embeddings coloured by emotion (seed 002's Fig. 4).
- ``query_grid``: each query image with its top-k retrieved images, distance and label under each, framed by
  relevance (seed 002's Fig. 5): green same emotion, orange same polarity, red opposite polarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from image_emotion.data.images import load_image
from image_emotion.files import atomic_path

TILE = 128
SAME, POLARITY, OTHER = (0, 170, 0), (235, 140, 0), (210, 0, 0)


def pyplot():
    """matplotlib's pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG, atomically, and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)


def tsne_coordinates(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(N, D)`` -> ``(N, 2)`` t-SNE coordinates (scikit-learn, PCA init, perplexity ≤ 30 and < N)."""
    from sklearn.manifold import TSNE

    n = len(embeddings)
    if n < 3:
        return np.zeros((n, 2))
    perplexity = float(min(30, max(2, (n - 1) // 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(embeddings)


def tsne_plot(xy: np.ndarray, labels: Sequence[str], order: Sequence[str], title: str, path: Path) -> None:
    """Scatter of ``xy (N, 2)`` coloured by label (legend in ``order``)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    cmap = plt.get_cmap("tab10")
    labels = np.asarray(labels)
    for i, name in enumerate(order):
        mask = labels == name
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=14, color=cmap(i % 10), label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, markerscale=1.2, loc="best", frameon=False)
    save_figure(fig, path)


def polarity_of(label: str, label_set: str | None = None) -> str | None:
    """``positive`` / ``negative`` of an emotion label in ``label_set`` (or the first label set that has the label);
    None for a label without polarity (Emotion6's neutral) or unknown to every set."""
    from image_emotion.data.emotions import get_label_set

    for name in (label_set,) if label_set else ("mikels8", "ekman6", "emotion6", "binary"):
        labels = get_label_set(name)
        if label in labels.labels:
            return labels.polarity_or_none(label)
    return None


def relevance(query: str, hit: str, label_set: str | None = None) -> str:
    """How a retrieved image's label ``hit`` relates to the query's: ``same`` emotion, same ``polarity``, ``other``."""
    if hit == query:
        return "same"
    side = polarity_of(hit, label_set)
    return "polarity" if side is not None and side == polarity_of(query, label_set) else "other"


def _tile(path: str | Path, caption: str, frame: tuple[int, int, int] | None) -> Image.Image:
    image = load_image(path).resize((TILE, TILE))
    canvas = Image.new("RGB", (TILE + 8, TILE + 24), "white")
    if frame is not None:
        ImageDraw.Draw(canvas).rectangle((0, 0, TILE + 7, TILE + 7), fill=frame)
    canvas.paste(image, (4, 4))
    ImageDraw.Draw(canvas).text((4, TILE + 10), caption, fill=(0, 0, 0))
    return canvas


def query_grid(rows: Sequence[dict], path: Path) -> None:
    """One row per query: ``{"query": path, "label": str, "neighbours": [{"id", "label", "distance",
    "relevance": "same" | "polarity" | "other"}]}`` -> the query (unframed) then its neighbours."""
    colours = {"same": SAME, "polarity": POLARITY, "other": OTHER}
    tiles = [
        [_tile(r["query"], f"query: {r['label']}", None)]
        + [_tile(n["id"], f"{n['label']} {n['distance']:.3f}", colours[n["relevance"]]) for n in r["neighbours"]]
        for r in rows
    ]
    width = max((len(t) for t in tiles), default=1) * (TILE + 8)
    grid = Image.new("RGB", (width, max(len(tiles), 1) * (TILE + 24)), "white")
    for y, row in enumerate(tiles):
        for x, tile in enumerate(row):
            grid.paste(tile, (x * (TILE + 8), y * (TILE + 24)))
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")


MIN_DRAWN_SCORE = 0.05  # regions scoring less are not drawn (an image with fewer than K regions pads with score 0)
REGION, TRUTH = (200, 0, 0), (0, 160, 0)
REGION_LEGEND = "emotional region: rank · S_emo = sqrt(p_emo^2 + p_obj^2), from 0 to 1.41 (the best first, thickest)"
CAPTION_BAND = 22  # px above the image


def region_dicts(regions: Sequence[Sequence[float]] | Sequence[dict]) -> list[dict[str, float]]:
    """Regions as ``{"x1", "y1", "x2", "y2", "score"}`` (pixels; S_emo in [0, √2]), from those or from
    ``[x1, y1, x2, y2, score]`` lists."""
    keys = ("x1", "y1", "x2", "y2", "score")
    return [dict(r) if isinstance(r, dict) else dict(zip(keys, map(float, r), strict=True)) for r in regions]


def label_font(size: int = 13):
    """Pillow's bundled scalable font at ``size`` px."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _labelled(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill: tuple, font, taken: list[tuple]
) -> None:
    """``text`` in white on a ``fill`` background with its top-left corner at ``xy``, moved down past the labels
    already drawn (``taken``, their rectangles: extended with this one) so none hides another."""
    x, y = xy
    left, top, right, bottom = draw.textbbox((x, y), text, font=font)
    box = [left - 2, top - 2, right + 2, bottom + 2]
    while any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in taken):
        shift = box[3] - box[1] + 1
        box[1], box[3], y = box[1] + shift, box[3] + shift, y + shift
    draw.rectangle(box, fill=fill)
    draw.text((x, y), text, fill=(255, 255, 255), font=font)
    taken.append(tuple(box))


def draw_regions(
    draw: ImageDraw.ImageDraw, regions: Sequence[dict], scale: tuple[float, float], top: int, min_score: float, font
) -> int:
    """The best ``top`` regions scoring at least ``min_score`` drawn (scaled by ``(sx, sy)``), each labelled with
    its rank and score; returns how many were drawn."""
    shown = [r for r in list(regions)[:top] if r["score"] >= min_score]
    sx, sy = scale
    boxes = [(r["x1"] * sx, r["y1"] * sy, r["x2"] * sx, r["y2"] * sy) for r in shown]
    for rank, box in enumerate(boxes):
        draw.rectangle(box, outline=REGION, width=max(1, 4 - rank))
    taken: list[tuple] = []
    for rank, (box, r) in enumerate(zip(boxes, shown, strict=True)):  # labels over every box, the best placed first
        _labelled(draw, (box[0] + 3, box[1] + 3), f"{rank + 1} · {r['score']:.2f}", REGION, font, taken)
    return len(shown)


def legend_band(width: int, entries: Sequence[tuple[tuple[int, int, int] | None, str]], font) -> Image.Image:
    """A white band at least ``width`` wide (wider where a line needs it) with one line per entry: a colour swatch
    (or none) and its text."""
    line = 18
    width = max([width, *(26 + round(font.getlength(text)) for _, text in entries)])
    band = Image.new("RGB", (width, 6 + line * len(entries)), "white")
    draw = ImageDraw.Draw(band)
    for i, (colour, text) in enumerate(entries):
        y = 4 + i * line
        if colour is not None:
            draw.rectangle((4, y + 2, 16, y + 13), outline=colour, width=3)
        draw.text((22 if colour is not None else 4, y), text, fill=(0, 0, 0), font=font)
    return band


def stack(*parts: Image.Image) -> Image.Image:
    """Images one under the other, left-aligned on white."""
    canvas = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts)), "white")
    y = 0
    for part in parts:
        canvas.paste(part, (0, y))
        y += part.height
    return canvas


def overlay_scale(size: tuple[int, int], smallest: int = 320, largest: int = 640) -> float:
    """The factor that brings an image's longer side into [``smallest``, ``largest``] px (1 when it is)."""
    side = max(size)
    return largest / side if side > largest else smallest / side if side < smallest else 1.0


def region_overlay(
    image: Image.Image,
    regions: Sequence[Sequence[float]] | Sequence[dict],
    caption: str,
    top: int = 3,
    min_score: float = MIN_DRAWN_SCORE,
) -> Image.Image:
    """``image`` scaled to 320-640 px on its longer side (``overlay_scale``) with its ``top`` emotional regions
    (best first) that score at least ``min_score``, each labelled with its rank and S_emo on a red background;
    ``caption`` on a white band above (``CAPTION_BAND`` px) and a legend below saying what the boxes and numbers
    mean."""
    scale = overlay_scale(image.size)
    shown = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)))
    font = label_font()
    drawn = draw_regions(ImageDraw.Draw(shown), region_dicts(regions), (scale, scale), top, min_score, font)
    head = Image.new("RGB", (max(shown.width, 8 + round(font.getlength(caption))), CAPTION_BAND), "white")
    ImageDraw.Draw(head).text((4, 4), caption, fill=(0, 0, 0), font=font)
    note = f"{drawn} drawn; regions scoring under {min_score:.2f} are not"
    return stack(head, shown, legend_band(shown.width, [(REGION, REGION_LEGEND), (None, note)], label_font(11)))
