"""A short summary of a finished run for a person at a terminal (``image-emotion summary``, the end of
``./setup.sh``): the headline figures beside the papers', the claims' verdicts, where the report and the MLflow UI
are, and the next command. Reads ``metrics/`` only; a figure a file lacks is a dash, never an error (a partial
run still gets its summary)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from image_emotion.inference import DEMO_PORT
from image_emotion.report.tables import published, published_002

DASH = "—"


def read_metrics(path: Path) -> dict[str, Any]:
    """A metrics file's object, or ``{}`` when it is absent or unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _pct(value: Any) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, int | float) else DASH


def headline_metrics(classifier: dict[str, Any], retrieval: dict[str, Any], generative: dict[str, Any]) -> dict:
    """The run's headline figures as MLflow metrics (the parent run carries them): seed 000's test accuracies,
    seed 002's test mAP8, seed 001's accuracy per emotion model; a figure a file lacks is left out."""
    found = {
        "test_accuracy": classifier.get("test_accuracy"),
        "binary_test_accuracy": classifier.get("binary_test_accuracy"),
        "retrieval_map8": (retrieval.get("main") or {}).get("map8"),
    }
    for name, figures in (generative.get("emotion_models") or {}).items():
        found[f"generative_accuracy.{name}"] = (figures or {}).get("accuracy")
    return {k: float(v) for k, v in found.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def summary(metrics: Path, report: Path = Path("reports/paper.html")) -> str:
    """The summary's lines for the run whose results are in ``metrics``."""
    classifier, retrieval = read_metrics(metrics / "classifier.json"), read_metrics(metrics / "retrieval.json")
    generative = read_metrics(metrics / "generative.json")
    paper_000, paper_002 = published()["table1"]["rows"]["global+emotional"], published_002()["table2"]["rows"]
    dataset = classifier.get("dataset", DASH)
    lines = [
        f"Done: the default run on {dataset} data"
        + (" (synthetic shapes: the models know nothing of real photos)" if dataset == "synthetic" else ""),
        "",
        f"  Rao et al., region-based CNN: {_pct(classifier.get('test_accuracy'))} test accuracy on 8 classes "
        f"(paper, FI: {paper_000['8']} %), {_pct(classifier.get('binary_test_accuracy'))} on 2 ({paper_000['2']} %)",
    ]
    claims = classifier.get("claims") or {}
    if claims:
        lines.append("    the paper's claims on this run (95 % intervals in the report):")
        lines += [f"      {key}: {c.get('verdict', DASH)}" for key, c in claims.items()]
    main = retrieval.get("main") or {}
    if main:
        map8 = main.get("map8")
        lines.append(
            f"  Yang et al., retrieval: mAP8 {map8:.3f} (the paper on FI: {paper_002['ours']['map8']})"
            if isinstance(map8, int | float)
            else "  Yang et al., retrieval: —"
        )
    found = generative.get("emotion_models") or {}
    if found:
        answers = ", ".join(f"{name} {_pct(m.get('accuracy'))}" for name, m in found.items())
        lines.append(f"  UGRIE, one generative model for every emotion model: {answers}")
    lines += [
        "",
        f"Report:  {report} (every table beside the paper's, the deviations, the figures)",
        "MLflow:  .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db   (then http://127.0.0.1:5000)",
        f"Demo:    .venv/bin/image-emotion demo   (then http://127.0.0.1:{DEMO_PORT}/: drop an image)",
        "Next:    .venv/bin/image-emotion predict your_photo.jpg --overlay overlays/",
    ]
    return "\n".join(lines)
