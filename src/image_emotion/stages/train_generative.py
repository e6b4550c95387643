"""Stage ``train_generative`` (seed 001, UGRIE): one generative model for every emotion model.

The main set (its label set, and its positive/negative view with ``generative.binary_view``) is mixed with
each set of ``generative.sets`` (prepared under ``data/prepared/generative/<name>``; on the default a synthetic
Ekman-6 set, in the paper EmotionROI, Emotion6...) into one training set; one model learns to fill every
emotion model's template (``models/templates.py``). The encoder is frozen and its features of every image are
computed once. Training checkpoints every epoch and resumes (``checkpoints/generative/last.pt``).

Also trained here, on the same features:
- the baseline of *separate* models: one softmax probe per emotion model, on all its training images;
- the low-resource curve: for each ``k`` of ``generative.low_resource_shots`` and each seed, a fresh generative
  model and the probes on ``k`` training images a class of each set, scored on the whole test split.

Outputs: ``models/generative/`` (model.pt, tokenizer/, settings.json), ``metrics/generative_train.json`` and
``metrics/generative_low_resource.json``. Every training is an MLflow run nested in the stage's run.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

import numpy as np
import torch

from image_emotion.config import Config, GenerativeConfig
from image_emotion.data.emotions import get_label_set
from image_emotion.device import pick_device
from image_emotion.errors import ConfigError
from image_emotion.files import fingerprint, source_fingerprint, write_json_atomic
from image_emotion.models import generative as generative_model
from image_emotion.models import templates
from image_emotion.models.generative import save_generative_model
from image_emotion.stages.paths import TrainGenerativePaths
from image_emotion.tracking import runs as tracking
from image_emotion.training import generative as generative_training
from image_emotion.training.generative import (
    Examples,
    accuracy_by_model,
    build_examples,
    encode_dataset,
    few_shot_rows,
    fit_probe,
    load_sets,
    new_model,
    train_generative_model,
)


def probe_accuracy(train: Examples, test: Examples, seed: int) -> dict[str, float]:
    """The separate-models baseline: a softmax probe per emotion model trained on ``train``, scored on ``test``."""
    out = {}
    for name in test.models:
        part, fit_on = test.of_model(name), train.of_model(name)
        if len(fit_on) == 0:
            continue
        probe = fit_probe(fit_on.features, fit_on.labels, len(get_label_set(name)), seed=seed)
        with torch.no_grad():
            out[name] = float((probe(part.features).argmax(1) == part.labels).float().mean())
    return out


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return float(np.mean(values)), statistics.stdev(values) if len(values) > 1 else None


def low_resource_curve(
    cfg: GenerativeConfig, encoder: torch.nn.Module, train: Examples, test: Examples, device: torch.device
) -> list[dict[str, Any]]:
    """For each ``k`` and emotion model: the generative model's and the probes' test accuracy trained on ``k``
    images a class (mean and std over ``cfg.low_resource_seeds``)."""
    rows = []
    for shots in cfg.low_resource_shots:
        scores: dict[str, dict[str, list[float]]] = {}
        images = 0
        for seed in cfg.low_resource_seeds:
            subset = train.select(few_shot_rows(train, shots, seed))
            images = len(set(subset.sources))
            with tracking.child_run(f"low_resource:k={shots}:seed={seed}", {"shots": shots, "seed": seed}):
                model = new_model(cfg, cfg.seed + seed, encoder=encoder).to(device)
                losses = train_generative_model(model, subset, cfg, seed=seed, steps=cfg.low_resource_steps)
                generative = accuracy_by_model(model, test)
                probes = probe_accuracy(subset, test, seed)
                tracking.log_metrics(
                    {"final_loss": losses[-1], **{f"test_accuracy_{k}": v for k, v in generative.items()}}
                )
            for name, value in generative.items():
                scores.setdefault(name, {"generative": [], "probe": []})["generative"].append(value)
                if name in probes:
                    scores[name]["probe"].append(probes[name])
        for name, by_method in scores.items():
            gen_mean, gen_std = _mean_std(by_method["generative"])
            probe_mean, probe_std = _mean_std(by_method["probe"]) if by_method["probe"] else (None, None)
            rows.append(
                {
                    "shots": shots,
                    "emotion_model": name,
                    "train_images": images,
                    "generative": gen_mean,
                    "generative_std": gen_std,
                    "probe": probe_mean,
                    "probe_std": probe_std,
                    "seeds": list(cfg.low_resource_seeds),
                }
            )
    return rows


def run(config: Config, paths: TrainGenerativePaths) -> dict[str, Any]:
    """The stage: features, the one model (resumable), the baselines, the low-resource curve, the outputs."""
    cfg = config.generative
    device = pick_device(config.device)
    sets = load_sets(paths.prepared, paths.sets, [spec.name for spec in cfg.sets])
    model = new_model(cfg, cfg.seed).to(device)
    features = {name: (data, encode_dataset(model, data)) for name, data in sets.items()}
    examples = build_examples(features, config.emotions, cfg.binary_view)
    train, val, test = (examples.split(s) for s in ("train", "val", "test"))
    for name in examples.models:
        if len(train.of_model(name)) == 0 or len(test.of_model(name)) == 0:
            raise ConfigError(f"emotion model {name}: needs train and test images; check prepare.split")
    code = source_fingerprint(sys.modules[__name__], generative_training, generative_model, templates)
    identity = fingerprint(
        cfg.to_dict() | {"epochs": None},
        config.emotions.to_dict(),
        {name: data.manifest.to_csv(index=False) for name, data in sets.items()},
        code,
    )
    with tracking.stage_run(config, "train_generative", paths.reads) as mlflow:
        mlflow.set_tag("device", str(device))
        with tracking.child_run("model", {"train_examples": len(train), "emotion_models": ",".join(examples.models)}):
            losses = train_generative_model(
                model, train, cfg, seed=cfg.seed, checkpoint=paths.checkpoint, fingerprint=identity,
                on_epoch=lambda epoch, loss: tracking.log_metrics({"loss": loss}, step=epoch),
            )  # fmt: skip
            tracking.log_missing_steps([{"loss": loss} for loss in losses])  # epochs lost to an outage before a resume
            val_accuracy = accuracy_by_model(model, val) if len(val) else {}
            test_accuracy = accuracy_by_model(model, test)
            tracking.log_metrics({f"test_accuracy_{k}": v for k, v in test_accuracy.items()})
        probes = probe_accuracy(train, test, cfg.seed)
        curve = low_resource_curve(cfg, model.encoder, train, test, device) if cfg.low_resource_seeds else []
    per_set = {
        name: {"dataset": data.name, "label_set": data.label_set, "images": len(data.manifest)}
        for name, data in sets.items()
    }
    save_generative_model(
        paths.out_dir,
        model.cpu(),
        {
            "emotion_models": examples.models,
            "primary": sets["main"].label_set,
            "dataset": sets["main"].name,
            "sets": per_set,
            "fingerprint": identity,
        },
    )
    metrics = {
        "dataset": sets["main"].name,
        "label_set": sets["main"].label_set,
        "encoder": cfg.encoder,
        "decoder": cfg.decoder_weights or f"small BART (d_model {cfg.d_model}, {cfg.layers}+{cfg.layers} layers)",
        "device": str(device),
        "sets": per_set,
        "emotion_models": examples.models,
        "train_examples": {name: len(train.of_model(name)) for name in examples.models},
        "test_examples": {name: len(test.of_model(name)) for name in examples.models},
        "first_epoch_loss": losses[0],
        "last_epoch_loss": losses[-1],
        "val_accuracy": val_accuracy,
        "test_accuracy": test_accuracy,
        "probe_test_accuracy": probes,
    }
    write_json_atomic(paths.low_resource, curve)
    write_json_atomic(paths.metrics, metrics)
    return metrics
