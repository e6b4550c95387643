"""``image-emotion predict`` as people use it: files, folders and globs in; a table, JSON or region overlays out.

- ``expand_inputs``: each argument is a file, a folder (its image files, recursively) or a glob pattern; what
  matches nothing is a failure, not a stop.
- ``choose_model``: ``--model-uri``; else the registry's ``models:/<register.model_name>@champion`` when the
  tracking store has one; else the local ``--detector`` / ``--head`` files; else a one-line error saying how to
  get a model.
- ``predict_files``: decodes every file (a bad one is a failure naming the reason, the others go on) and runs
  the model ``--batch-size`` images at a time, with a progress bar on stderr for more than one batch.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from image_emotion.data.images import is_image_name, load_image
from image_emotion.errors import ConfigError, ImageDecodeError


def expand_inputs(arguments: list[str]) -> tuple[list[Path], dict[str, str]]:
    """The image files the arguments name (in order, without repeats) and the arguments that name none."""
    files: list[Path] = []
    failures: dict[str, str] = {}
    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p))
        elif path.is_file():
            found = [path]
        elif glob.has_magic(arg):
            found = sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).is_file())
        else:
            failures[arg] = "no such file or folder"
            continue
        if not found:
            failures[arg] = "no image files there (jpg, png, bmp, gif, webp, tif)"
        files += [f for f in found if f not in files]
    return files, failures


def _champion_uri(args: argparse.Namespace) -> str | None:
    """``models:/<name>@champion`` when the configured tracking store exists and has one (never creates a store)."""
    import os

    from image_emotion.config import Config, load_config
    from image_emotion.tracking.runs import tracking_uri

    config = load_config(args.params) if Path(args.params).is_file() else Config()
    uri = tracking_uri(config)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow.exceptions import MlflowException

    name = config.register.model_name
    try:
        mlflow.MlflowClient(uri).get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    mlflow.set_tracking_uri(uri)
    return f"models:/{name}@champion"


def choose_model(args: argparse.Namespace) -> tuple[Callable[[list[tuple[Path, Any]]], pd.DataFrame], str]:
    """(a function ``[(path, decoded image), ...] -> DataFrame`` of the served model's rows, the model's name), as
    the module docstring orders the models."""
    uri = args.model_uri or _champion_uri(args)
    if uri:
        import mlflow

        from image_emotion.tracking.pyfunc import encode_image_file

        model = mlflow.pyfunc.load_model(uri)
        return (lambda chunk: model.predict(pd.DataFrame({"image": [encode_image_file(p) for p, _ in chunk]}))), uri
    if not (args.detector.is_file() and args.head.is_file()):
        raise ConfigError(
            f"no model: {args.detector} / {args.head} not found and no champion in the registry; run `dvc repro` "
            "(or give --model-uri)"
        )
    from image_emotion.tracking.pyfunc import EmotionPredictor

    predictor = EmotionPredictor(args.detector, args.head, batch_size=args.batch_size)
    return (lambda chunk: predictor.predict_images([img for _, img in chunk])), f"{args.detector} + {args.head}"


def predict_files(files: list[Path], args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Results by file (label, polarity, confidence, probabilities, regions, size) and failures by file."""
    from tqdm import tqdm

    decoded, failures = [], {}
    for path in files:
        try:
            decoded.append((path, load_image(path)))
        except ImageDecodeError as exc:
            failures[str(path)] = exc.reason
    if not decoded:
        return {}, failures
    run, _ = choose_model(args)
    results: dict[str, dict[str, Any]] = {}
    batches = range(0, len(decoded), args.batch_size)
    with tqdm(total=len(decoded), unit="img", file=sys.stderr, disable=len(batches) < 2) as bar:
        for start in batches:
            chunk = decoded[start : start + args.batch_size]
            for (path, image), row in zip(chunk, run(chunk).to_dict("records"), strict=True):
                results[str(path)] = _result(row, image)
            bar.update(len(chunk))
    return results, failures


def _result(row: dict[str, Any], image: Any) -> dict[str, Any]:
    probabilities = {k: float(v) for k, v in row.items() if k not in ("label", "polarity", "regions")}
    return {
        "label": row["label"],
        "polarity": row.get("polarity") or "",
        "confidence": probabilities[row["label"]],
        "probabilities": probabilities,
        "regions": json.loads(row["regions"]),
        "size": list(image.size),
    }


def print_table(results: dict[str, dict[str, Any]], failures: dict[str, str]) -> None:
    """image | emotion | confidence | polarity, one line an image; then each failure with its reason."""
    if results:
        width = max(len("image"), *(len(k) for k in results))
        print(f"{'image':<{width}}  {'emotion':<12} {'confidence':>10}  polarity")
        for path, r in results.items():
            print(f"{path:<{width}}  {r['label']:<12} {r['confidence']:>10.3f}  {r['polarity']}")
    for path, reason in failures.items():
        print(f"failed: {path}: {reason}", file=sys.stderr)


def write_overlays(results: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """``out_dir/<name>.png`` for each image: its top regions drawn, captioned with emotion, confidence, polarity
    (names made unique when two images share a file name)."""
    from image_emotion.figures import region_overlay
    from image_emotion.files import atomic_path

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path, r in results.items():
        name = Path(path).stem
        target = out_dir / f"{name}.png"
        n = 1
        while target in written:
            n += 1
            target = out_dir / f"{name}-{n}.png"
        caption = f"{r['label']} {r['confidence']:.2f} ({r['polarity'] or 'no polarity'})"
        with atomic_path(target) as tmp:
            region_overlay(load_image(path), r["regions"], caption).save(tmp, format="PNG")
        written.append(target)
    return written
