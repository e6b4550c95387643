"""Stage ``finetune_detector``: the emotional-region branch trained on ``detector_data``'s boxes (the paper:
EmotionROI), starting from the object-pretrained detector of ``pretrain_objects`` (the paper: COCO).

The object branch (its own box head copy and the object classifier) stays frozen, so p_obj keeps the
meaning it learned on objects; the emotional box head starts from the object box head's weights; the RPN
learns emotional-region proposals (positives IoU > 0.7, negatives < 0.3). Training resumes exactly from its
checkpoint (``training/detection.py``) when the params, data, object model and code match. Outputs:
``models/detector/detector.pt`` and ``metrics/detector.json`` (loss per epoch, region recall on the holdout).
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from image_emotion.config import Config
from image_emotion.data import torch_data
from image_emotion.data.torch_data import DetectionDataset, PreparedDataset
from image_emotion.files import file_sha256, fingerprint, source_fingerprint, write_json_atomic
from image_emotion.models import backbones, region_detector
from image_emotion.models.region_detector import RegionDetector, load_detector, region_recall, save_detector
from image_emotion.stages.paths import FinetunePaths
from image_emotion.tracking import runs as tracking
from image_emotion.training import detection, distributed
from image_emotion.training.detection import train_detector


def evaluate_recall(
    detector: RegionDetector,
    data: PreparedDataset,
    device: torch.device,
    tops: tuple[int, ...],
    kind: str = "emotional",
) -> dict[int, float]:
    """For each ``top`` in ``tops``: the mean share of ground-truth boxes hit (IoU >= 0.5) by the ``top`` best
    ``kind`` regions (``"emotional"``; ``"object"``: ``detect_objects``, for the object-pretrained detector). One
    detection pass over ``data`` serves every ``top``."""
    rows = data.manifest[data.manifest["boxes"].map(len) > 0]
    if rows.empty:
        return dict.fromkeys(tops, float("nan"))
    hits: dict[int, list[float]] = {top: [] for top in tops}
    detector.eval()
    with torch.inference_mode():
        for path, boxes in zip(rows["path"], rows["boxes"], strict=True):
            image = [data.tensor_image(path).to(device)]
            found = (detector(image)[0]["boxes"] if kind == "emotional" else detector.detect_objects(image)[0][0]).cpu()
            gt = torch.tensor(boxes, dtype=torch.float32)
            for top in tops:
                hits[top].append(region_recall(found[:top], gt))
    return {top: sum(h) / len(h) for top, h in hits.items()}


def run(config: Config, paths: FinetunePaths) -> dict[str, Any]:
    """Fine-tune (or resume) the emotional branch, save the detector, return the metrics. Under torchrun every
    rank trains its share of each batch (``training/distributed.py``); rank 0 evaluates and writes the outputs."""
    with distributed.session(config.device) as device:
        return _run(config, paths, device)


def _run(config: Config, paths: FinetunePaths, device: torch.device) -> dict[str, Any]:
    ft = config.finetune
    data = PreparedDataset.load(paths.prepared)
    train = data.split("train")
    if ft.max_images and len(train.manifest) > ft.max_images:  # a seeded subset bounds CPU time
        keep = train.manifest.sample(n=ft.max_images, random_state=ft.seed).index
        train = train.subset(train.manifest.index.isin(keep))
    holdout = data.split("val") if (data.manifest["split"] == "val").any() else data.split("test")
    # what the trajectory depends on; not the epoch count, so a longer run continues a shorter one
    code = source_fingerprint(sys.modules[__name__], detection, distributed, region_detector, backbones, torch_data)
    trajectory = ft.to_dict() | {"epochs": None}
    inputs = (file_sha256(paths.prepared / "manifest.csv"), file_sha256(paths.objects))
    identity = fingerprint(trajectory, *inputs, code)

    torch.manual_seed(ft.seed)
    detector = load_detector(paths.objects, device)
    detector.freeze_object_branch(trained=bool(detector.has_object_classifier))
    detector.start_emotional_from_objects()
    dataset = DetectionDataset.emotional_regions(train, hflip=ft.hflip, seed=ft.seed)
    cfg = detector.config
    with distributed.main_only(tracking.stage_run(config, "finetune_detector", paths.reads)) as mlflow:
        mlflow.set_tag("device", str(device))
        history, resumed_from = train_detector(
            detector, dataset, ft, detector, paths.checkpoint, identity, device, mlflow, "finetune"
        )
        if not distributed.is_main():  # the other ranks' work ends with the training
            return {"rank": distributed.rank(), "loss_per_epoch": [h["loss"] for h in history]}
        tracking.log_missing_steps(history, first_step=1)  # an epoch whose logging failed before a resume
        recall = evaluate_recall(detector, holdout, device, (cfg.top_k, 2))
        # the same boxes found by the object detector (Table 1's object regions): how far objects are from them
        object_recall = evaluate_recall(load_detector(paths.objects, device), holdout, device, (cfg.top_k, 2), "object")
        metrics = {
            "epochs": ft.epochs,
            "resumed_from_epoch": resumed_from,
            "final_loss": history[-1]["loss"] if history else None,
            "loss_per_epoch": [h["loss"] for h in history],
            f"recall_at_{cfg.top_k}": recall[cfg.top_k],
            "recall_at_2": recall[2],
            f"object_recall_at_{cfg.top_k}": object_recall[cfg.top_k],
            "object_recall_at_2": object_recall[2],
            "train_images": len(dataset),
            "holdout_split": str(holdout.manifest["split"].iloc[0]) if len(holdout.manifest) else None,
            "device": str(device),
        }
        mlflow.log_metrics(
            {
                f"recall_at_{cfg.top_k}": recall[cfg.top_k],
                "recall_at_2": recall[2],
                f"object_recall_at_{cfg.top_k}": object_recall[cfg.top_k],
                "object_recall_at_2": object_recall[2],
            }
        )
    save_detector(detector, paths.model, {"fingerprint": identity})
    write_json_atomic(paths.metrics, metrics)
    return metrics
