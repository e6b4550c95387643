"""The plain-text tables the CLI prints (one function a command); JSON is the answers' ``to_dict``."""

from __future__ import annotations

from pathlib import Path

from image_emotion.inference.describe import Description
from image_emotion.inference.predict import Prediction
from image_emotion.inference.retrieve import Answer


def predictions(results: dict[Path, Prediction]) -> str:
    """image | emotion | confidence | polarity, one line an image."""
    if not results:
        return ""
    width = max(len("image"), *(len(str(k)) for k in results))
    lines = [f"{'image':<{width}}  {'emotion':<12} {'confidence':>10}  polarity"]
    lines += [f"{p!s:<{width}}  {r.label:<12} {r.confidence:>10.3f}  {r.polarity}" for p, r in results.items()]
    return "\n".join(lines)


def descriptions(results: dict[Path, list[Description]]) -> str:
    """image | emotion model | label | confidence | polarity, one line an image and emotion model."""
    lines = [f"{'image':40} {'emotion model':14} {'label':12} {'confidence':>10}  polarity"]
    for image, rows in results.items():
        name = str(image)[-40:]
        lines += [f"{name:40} {r.emotion_model:14} {r.label:12} {r.confidence:10.3f}  {r.polarity}" for r in rows]
    return "\n".join(lines)


def neighbours(results: dict[Path, Answer], label_header: str = "label") -> str:
    """Each query's emotion, then its neighbours: rank | distance | label | path."""
    blocks = []
    for query, answer in results.items():
        width = max([len(label_header), *(len(str(n.label)) for n in answer.neighbours)])
        lines = [
            f"{query}: {answer.label} ({answer.polarity})",
            f"  {'rank':>4}  {'distance':>8}  {label_header:<{width}}  path",
        ]
        lines += [f"  {n.rank:>4}  {n.distance:>8.4f}  {n.label!s:<{width}}  {n.id}" for n in answer.neighbours]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def failures(failed: dict[str, str]) -> str:
    """One line a failure: ``failed: <file>: <reason>`` (every command, on stderr)."""
    return "\n".join(f"failed: {path}: {why}" for path, why in failed.items())
