"""Stage ``register_metric`` (seed 002): log the retrieval model (sentiment-vector network + index) to MLflow,
register it as ``register.retrieval_model_name``, alias ``challenger``; ``champion`` only when its validation mAP8
(validation queries against the train gallery) is at least ``register.min_map8`` and beats the current champion's
(same dataset and label set). The test mAP8 is recorded with it, never compared.

The pyfunc (``tracking/retrieval_pyfunc.py``) answers a DataFrame of base64 images with each image's predicted
emotion and its nearest images in the index (param ``k``). The decision goes to ``metrics/register_metric.json``.
"""

from __future__ import annotations

import json
from typing import Any

from image_emotion.config import Config
from image_emotion.files import write_json_atomic
from image_emotion.stages.paths import RegisterMetricPaths
from image_emotion.tracking import runs as tracking
from image_emotion.tracking.packaging import PACKAGE_DIR, model_requirements
from image_emotion.tracking.pyfunc import input_example
from image_emotion.tracking.registry import register_and_promote
from image_emotion.tracking.retrieval_pyfunc import log_retrieval_model


def run(config: Config, paths: RegisterMetricPaths) -> dict[str, Any]:
    retrieval = json.loads(paths.retrieval.read_text())
    candidate = {
        "map8": float(retrieval["validation"]["map8"]),
        "dataset": retrieval["dataset"],
        "label_set": retrieval["label_set"],
    }
    example = input_example(paths.prepared)
    with tracking.stage_run(config, "register_metric", paths.reads) as mlflow:
        result = register_and_promote(
            mlflow,
            lambda: (
                log_retrieval_model(
                    mlflow,
                    paths.model,
                    paths.index,
                    example,
                    [str(PACKAGE_DIR)],
                    model_requirements(("faiss-cpu",)),
                    config.serving,
                ).model_uri
            ),
            [paths.model, paths.index],
            config.register.retrieval_model_name,
            candidate,
            config.register.min_map8,
            key="map8",
            tag="val_map8",
            measure="validation mAP8",
            setting="register.min_map8",
            reported={"test_map8": float(retrieval["main"]["map8"])},
        )
    write_json_atomic(paths.metrics, result)
    return result
