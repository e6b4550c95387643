"""Stage ``evaluate_generative`` (seed 001): the saved generative model on the test images of every set, per
emotion model, from the same weights, beside separate models (the report adds seed 000's classifier).

For each emotion model of the model (the main set's, binary, each of ``generative.sets``'):
- ``accuracy`` of the most likely template (the prediction), per-class accuracy, polarity accuracy, confusion;
- the constrained generation (beam search through the templates' prefix trie): the share of valid texts
  (1 by construction), its accuracy and its agreement with the ranking; the share of valid texts *without*
  the constraint (what the constraint buys);
- ``kl_to_target``: mean KL(target distribution || the model's label distribution) (eq. 4 / votes).

Beside them: the probes trained on the same features, one per emotion model (``generative_train.json``), and
the low-resource curve (the report sets seed 000's multi-level classifier beside them). Writes
``metrics/generative.json`` (the report reads it) and
``plots_generative/``: ``low_resource.csv`` / ``.png`` and ``confusion_<emotion model>.csv``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from image_emotion.config import Config
from image_emotion.data.emotions import get_label_set
from image_emotion.device import pick_device
from image_emotion.figures import pyplot, save_figure
from image_emotion.files import write_json_atomic, write_text_atomic
from image_emotion.metrics import classification_report
from image_emotion.models.generative import load_generative_model
from image_emotion.stages.paths import EvaluateGenerativePaths
from image_emotion.tracking import runs as tracking
from image_emotion.training.generative import (
    Examples,
    build_examples,
    encode_dataset,
    generated_labels,
    label_probabilities,
    load_sets,
)


def score_emotion_model(model, part: Examples, name: str, num_beams: int) -> dict[str, Any]:
    """Every measure of the module docstring for one emotion model's test examples."""
    probs = label_probabilities(model, part.features, name)
    y = part.labels.numpy()
    predicted = probs.argmax(1).numpy()
    report = classification_report(y, predicted, name)
    generated = generated_labels(model, part.features, name, constrained=True, num_beams=num_beams)
    free = generated_labels(model, part.features, name, constrained=False, num_beams=num_beams)
    targets = torch.stack(part.distributions)
    kl = (targets * (targets.clamp_min(1e-12).log() - probs.clamp_min(1e-12).log())).sum(1)
    return {
        **report,
        "generated_valid": float(np.mean([g is not None for g in generated])),
        "generated_accuracy": float(np.mean([g == t for g, t in zip(generated, y.tolist(), strict=True)])),
        "generation_agrees_with_ranking": float(
            np.mean([g == p for g, p in zip(generated, predicted.tolist(), strict=True)])
        ),
        "unconstrained_valid": float(np.mean([g is not None for g in free])),
        "kl_to_target": float(kl.mean()),
    }


def plot_low_resource(curve: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against k (images a class): the generative model (solid) and the probes (dashed) per emotion
    model."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for i, name in enumerate(dict.fromkeys(r["emotion_model"] for r in curve)):
        rows = [r for r in curve if r["emotion_model"] == name]
        colour = f"C{i}"
        ax.plot(
            [r["shots"] for r in rows], [r["generative"] for r in rows], "o-", color=colour, label=f"{name} one model"
        )
        if all(r["probe"] is not None for r in rows):
            ax.plot([r["shots"] for r in rows], [r["probe"] for r in rows], "s--", color=colour, label=f"{name} probe")
    ax.set_xlabel("training images a class (k)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def write_plots(out: Path, per_model: dict[str, dict[str, Any]], curve: list[dict[str, Any]]) -> None:
    for name, scores in per_model.items():
        labels = get_label_set(name).labels
        lines = ["actual,predicted"]
        for i, row in enumerate(scores["confusion_matrix"]):
            lines.extend(f"{labels[i]},{labels[j]}" for j, count in enumerate(row) for _ in range(count))
        write_text_atomic(out / f"confusion_{name}.csv", "\n".join(lines) + "\n")
    columns = ["shots", "emotion_model", "generative", "probe"]
    lines = [",".join(columns)] + [",".join("" if r[c] is None else str(r[c]) for c in columns) for r in curve]
    write_text_atomic(out / "low_resource.csv", "\n".join(lines) + "\n")
    if curve:
        plot_low_resource(curve, out / "low_resource.png")


def run(config: Config, paths: EvaluateGenerativePaths) -> dict[str, Any]:
    """Score the saved model on every set's test split; compare; write the metrics and plots."""
    device = pick_device(config.device)
    model, state = load_generative_model(paths.model)
    model.to(device)
    names = [name for name in state["sets"] if name != "main"]
    sets = {name: data.split("test") for name, data in load_sets(paths.prepared, paths.sets, names).items()}
    features = {name: (data, encode_dataset(model, data)) for name, data in sets.items()}
    binary_view = "binary" in state["emotion_models"]  # (a binary set is its own view already)
    test = build_examples(features, config.emotions, binary_view)
    primary = state["primary"]
    training = json.loads(paths.training.read_text())
    curve = json.loads(paths.low_resource.read_text()) if paths.low_resource.is_file() else []
    with tracking.stage_run(config, "evaluate_generative", paths.reads):
        per_model = {
            name: score_emotion_model(model, test.of_model(name), name, config.generative.num_beams)
            for name in test.models
        }
        for name, scores in per_model.items():
            tracking.log_metrics(
                {
                    f"{name}_{k}": scores[k]
                    for k in ("accuracy", "generated_valid", "unconstrained_valid", "kl_to_target")
                }
            )
    metrics = {
        "dataset": state["dataset"],
        "label_set": primary,
        "accuracy": per_model[primary]["accuracy"],
        "val_accuracy": training.get("val_accuracy", {}).get(primary),  # what promotion compares
        "emotion_models": per_model,
        "probe_accuracy": training.get("probe_test_accuracy", {}),
        "decoding": {
            "valid": min(s["generated_valid"] for s in per_model.values()),
            "unconstrained_valid": min(s["unconstrained_valid"] for s in per_model.values()),
        },
        "low_resource": curve,
        "sets": state["sets"],
        "encoder": training.get("encoder"),
        "decoder": training.get("decoder"),
    }
    write_plots(paths.plots, per_model, curve)
    write_json_atomic(paths.metrics, metrics)
    return metrics
