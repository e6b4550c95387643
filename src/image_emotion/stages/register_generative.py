"""Stage ``register_generative`` (seed 001): log the generative model to MLflow, register it as
``register.generative_model_name``, alias ``challenger``; ``champion`` only when its validation accuracy on the
main set's emotion model is at least ``register.min_generative_accuracy`` and beats the current champion's (same
dataset and label set). The test accuracy is recorded with it, never compared.

The pyfunc (``tracking/generative_pyfunc.py``) answers a DataFrame of base64 images with label, confidence,
polarity, distribution and filled template per emotion model. The decision goes to
``metrics/register_generative.json``.
"""

from __future__ import annotations

import json
from typing import Any

from image_emotion.config import Config
from image_emotion.errors import ConfigError
from image_emotion.files import write_json_atomic
from image_emotion.stages.paths import RegisterGenerativePaths
from image_emotion.tracking import runs as tracking
from image_emotion.tracking.generative_pyfunc import log_generative_model
from image_emotion.tracking.packaging import PACKAGE_DIR, model_requirements
from image_emotion.tracking.pyfunc import input_example
from image_emotion.tracking.registry import register_and_promote


def run(config: Config, paths: RegisterGenerativePaths) -> dict[str, Any]:
    evaluation = json.loads(paths.evaluation.read_text())
    if evaluation.get("val_accuracy") is None:
        raise ConfigError(f"{paths.evaluation}: no val_accuracy (promotion compares validation); re-run its stages")
    candidate = {
        "accuracy": float(evaluation["val_accuracy"]),
        "dataset": evaluation["dataset"],
        "label_set": evaluation["label_set"],
    }
    example = input_example(paths.prepared)
    with tracking.stage_run(config, "register_generative", paths.reads) as mlflow:
        result = register_and_promote(
            mlflow,
            lambda: (
                log_generative_model(
                    mlflow,
                    paths.model,
                    example,
                    [str(PACKAGE_DIR)],
                    model_requirements(("transformers", "tokenizers")),
                    config.serving,
                ).model_uri
            ),
            [paths.model],
            config.register.generative_model_name,
            candidate,
            config.register.min_generative_accuracy,
            setting="register.min_generative_accuracy",
            reported={"test_accuracy": float(evaluation["accuracy"])},
        )
    write_json_atomic(paths.metrics, result)
    return result
