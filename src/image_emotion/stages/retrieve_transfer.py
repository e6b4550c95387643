"""Stage ``retrieve_transfer`` (seed 002): leave-one-out retrieval on one transfer set, the paper's protocol for
its small sets (IAPSa, ArtPhoto, Abstract): every image a query against all the others, relevance by the set's
own labels (mAP2 by their polarity). Writes ``metrics/retrieval_transfer/<set>.json``; the report joins them to
the main set's ``metrics/retrieval.json``.
"""

from __future__ import annotations

from typing import Any

from image_emotion.config import Config
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.device import pick_device
from image_emotion.files import write_json_atomic
from image_emotion.metrics import retrieval_report
from image_emotion.models.metric import load_metric_model
from image_emotion.stages.paths import RetrieveTransferPaths
from image_emotion.tracking import runs as tracking
from image_emotion.training.metric import RETRIEVAL_MEASURES, embed_prepared


def run(config: Config, paths: RetrieveTransferPaths) -> dict[str, Any]:
    model, state = load_metric_model(paths.model)
    model.to(pick_device(config.device))
    data = PreparedDataset.load(paths.prepared)
    features = embed_prepared(model, state, data)[state["retrieval_feature"]]
    labels = data.labels().numpy()
    report = retrieval_report(features, labels, features, labels, data.label_set, exclude_self=True)
    result = {
        "set": paths.set_name,
        "protocol": "leave-one-out",
        "dataset": data.name,
        "label_set": data.label_set,
        "images": len(labels),
        **report,
    }
    with tracking.stage_run(config, f"retrieve@{paths.set_name}", paths.reads):
        tracking.log_metrics({k: report[k] for k in RETRIEVAL_MEASURES})
    write_json_atomic(paths.metrics, result)
    return result
