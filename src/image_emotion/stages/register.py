"""Stage ``register``: log the model to MLflow, register it, alias ``challenger``; ``champion`` only if better.

The model is the MLflow pyfunc of ``tracking/pyfunc.py`` (detector + head as artifacts, the package as code, a
signature and an input example of two test images). The new version always becomes ``challenger``; it
takes ``champion`` when its validation accuracy is at least ``register.min_accuracy`` and beats the current
champion's (same dataset and label set; a champion of another dataset is never replaced automatically). The
test accuracy is recorded with it, never compared.
The decision, both figures and the reason are logged and written to ``metrics/register.json``.
"""

from __future__ import annotations

import json
from typing import Any

from image_emotion.config import Config
from image_emotion.errors import ConfigError
from image_emotion.files import write_json_atomic
from image_emotion.stages.paths import RegisterPaths
from image_emotion.tracking import runs as tracking
from image_emotion.tracking.packaging import PACKAGE_DIR, model_requirements
from image_emotion.tracking.pyfunc import EmotionModel, EmotionPredictor, input_example
from image_emotion.tracking.registry import register_and_promote


def run(config: Config, paths: RegisterPaths) -> dict[str, Any]:
    evaluation = json.loads(paths.evaluation.read_text())
    name, min_accuracy = config.register.model_name, config.register.min_accuracy
    if evaluation.get("val_accuracy") is None:
        raise ConfigError(
            f"{paths.evaluation}: no val_accuracy (a validation split is needed to promote); re-run evaluate"
        )
    candidate = {
        "accuracy": float(evaluation["val_accuracy"]),
        "dataset": evaluation["dataset"],
        "label_set": evaluation["label_set"],
    }
    example = input_example(paths.prepared)

    with tracking.stage_run(config, "register", paths.reads) as mlflow:
        from mlflow.models import infer_signature

        def log_model() -> str:
            output_example = EmotionPredictor(paths.detector, paths.head, device="cpu").predict(example)
            return mlflow.pyfunc.log_model(
                name="model",
                python_model=EmotionModel(),
                artifacts={"detector": str(paths.detector), "head": str(paths.head)},
                code_paths=[str(PACKAGE_DIR)],
                signature=infer_signature(example, output_example),
                input_example=example,
                pip_requirements=model_requirements(),
                model_config=config.serving.model_dump(),  # the limits it serves with
            ).model_uri

        result = register_and_promote(
            mlflow, log_model, [paths.detector, paths.head], name, candidate, min_accuracy,
            reported={"test_accuracy": float(evaluation["test_accuracy"])},
        )  # fmt: skip
    write_json_atomic(paths.metrics, result)
    return result
