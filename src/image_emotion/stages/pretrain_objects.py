"""Stage ``pretrain_objects``: the detector pre-trained on objects (the paper: COCO), the start of the
emotional fine-tuning.

With ``detector.object_weights`` (a torchvision COCO Faster R-CNN checkpoint on local disk) the detector is
built from it - backbone, FPN, RPN, box head, object classifier - and nothing is trained. Without it, the
synthetic objects set plays COCO: backbone, RPN and the object branch (box head, classifier over the shape
categories, box regression) train on every object of it, motifs and distractors alike. Either way the
object branch is frozen from here on. Resumes exactly from its checkpoint. Outputs: ``models/objects/
detector.pt`` and ``metrics/objects.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from image_emotion.config import Config
from image_emotion.data import synthetic, torch_data
from image_emotion.data.torch_data import DetectionDataset
from image_emotion.files import file_sha256, fingerprint, source_fingerprint, write_json_atomic
from image_emotion.models import backbones, region_detector
from image_emotion.models.region_detector import RegionDetector, save_detector
from image_emotion.stages.paths import PretrainPaths
from image_emotion.tracking import runs as tracking
from image_emotion.training import detection, distributed
from image_emotion.training.detection import train_detector


def run(config: Config, paths: PretrainPaths) -> dict[str, Any]:
    """Load the COCO checkpoint or pre-train on the synthetic objects; save the object-pretrained detector. Under
    torchrun every rank trains its share of each batch (``training/distributed.py``); rank 0 writes the outputs."""
    with distributed.session(config.device) as device:
        return _run(config, paths, device)


def _run(config: Config, paths: PretrainPaths, device: torch.device) -> dict[str, Any]:
    cfg, hp = config.detector, config.pretrain
    torch.manual_seed(hp.seed)
    detector = RegionDetector(cfg).to(device)
    with distributed.main_only(tracking.stage_run(config, "pretrain_objects", paths.reads)) as mlflow:
        mlflow.set_tag("device", str(device))
        if cfg.object_weights:
            loaded, total = detector.coco_loaded
            metrics = {"source": str(cfg.object_weights), "tensors_loaded": loaded, "tensors_in_file": total}
        else:
            for module in detector.object_branch_modules():
                module.requires_grad_(True)
            detector.roi_heads.requires_grad_(False)  # the emotional branch waits for finetune_detector
            root = Path(hp.root)
            dataset = DetectionDataset.objects(root, synthetic.read_objects(root), hp.hflip, hp.seed)
            code = source_fingerprint(
                sys.modules[__name__], detection, distributed, region_detector, backbones, torch_data
            )
            identity = fingerprint(
                cfg.to_dict(), hp.to_dict() | {"epochs": None}, file_sha256(root / "annotations.csv"), code
            )
            history, resumed_from = train_detector(
                detector, dataset, hp, detector.object_losses, paths.checkpoint, identity, device, mlflow, "pretrain"
            )
            if not distributed.is_main():  # the other ranks' work ends with the training
                return {"rank": distributed.rank(), "loss_per_epoch": [h["loss"] for h in history]}
            tracking.log_missing_steps(history, first_step=1)  # an epoch whose logging failed before a resume
            detector.freeze_object_branch()
            detector.roi_heads.requires_grad_(True)
            metrics = {
                "source": str(root),
                "images": len(dataset),
                "objects": sum(len(b) for b in dataset.boxes),
                "epochs": hp.epochs,
                "resumed_from_epoch": resumed_from,
                "loss_per_epoch": [h["loss"] for h in history],
            }
    if not distributed.is_main():  # a COCO checkpoint loaded: nothing to train, rank 0 saves it
        return {"rank": distributed.rank()}
    save_detector(detector, paths.model)
    write_json_atomic(paths.metrics, metrics)
    return metrics
