"""Stage ``finetune_detector``: train the emotional-region detector on a manifest with boxes.

SGD with warm-up and gradient clipping (params ``finetune``); a checkpoint after every epoch
(``checkpoints/detector/last.pt``, written atomically). Interrupted, the stage resumes from it — when the
checkpoint was made with the same detector/finetune params and the same manifest; otherwise it starts
afresh. Each epoch's image order depends only on the seed and the epoch, so a resumed run sees the same
batches as an uninterrupted one. Outputs: ``models/detector/detector.pt`` and ``metrics/detector.json``
(loss per epoch, region recall on the validation split).
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from image_emotion import tracking
from image_emotion.checkpoint import file_sha256, fingerprint, load_checkpoint, save_checkpoint
from image_emotion.config import get
from image_emotion.data.torch_data import DetectionDataset, PreparedDataset, collate_lists, load_tensor_image
from image_emotion.device import pick_device
from image_emotion.errors import ConfigError
from image_emotion.io import write_json_atomic
from image_emotion.models.region_detector import DetectorConfig, RegionDetector, region_recall, save_detector
from image_emotion.stages.paths import FinetunePaths

FINETUNE_DEFAULTS = {
    "epochs": 3,
    "batch_size": 8,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "warmup_steps": 20,
    "grad_clip": 10.0,
    "seed": 0,
    "hflip": True,
    "max_images": None,
}


def finetune_params(params: dict[str, Any]) -> dict[str, Any]:
    """params ``finetune`` over the defaults; unknown keys are an error."""
    given = get(params, "finetune", {}) or {}
    unknown = sorted(set(given) - set(FINETUNE_DEFAULTS))
    if unknown:
        raise ConfigError(f"finetune: unknown key(s) {', '.join(unknown)}; known: {', '.join(FINETUNE_DEFAULTS)}")
    return {**FINETUNE_DEFAULTS, **given}


def evaluate_recall(
    detector: RegionDetector, data: PreparedDataset, device: torch.device, tops: tuple[int, ...]
) -> dict[int, float]:
    """For each ``top`` in ``tops``: the mean share of ground-truth boxes hit (IoU >= 0.5) by the ``top`` best
    emotional regions. One detection pass over ``data`` serves every ``top``."""
    rows = data.manifest[data.manifest["boxes"].map(len) > 0]
    if rows.empty:
        return dict.fromkeys(tops, float("nan"))
    hits: dict[int, list[float]] = {top: [] for top in tops}
    detector.eval()
    with torch.inference_mode():
        for path, boxes in zip(rows["path"], rows["boxes"], strict=True):
            found = detector([load_tensor_image(data.root / path).to(device)])[0]["boxes"].cpu()
            gt = torch.tensor(boxes, dtype=torch.float32)
            for top in tops:
                hits[top].append(region_recall(found[:top], gt))
    return {top: sum(h) / len(h) for top, h in hits.items()}


def run(params: dict[str, Any], paths: FinetunePaths) -> dict[str, Any]:
    """Fine-tune (or resume), save the detector, return the metrics."""
    cfg = DetectorConfig.from_params(get(params, "detector", {}))
    ft = finetune_params(params)
    device = pick_device(str(get(params, "device", "auto")))
    data = PreparedDataset.load(paths.prepared)
    train = data.split("train")
    if ft["max_images"] and len(train.manifest) > int(ft["max_images"]):  # a seeded subset bounds CPU time
        keep = train.manifest.sample(n=int(ft["max_images"]), random_state=int(ft["seed"])).index
        train = train.subset(train.manifest.index.isin(keep))
    holdout = data.split("val") if (data.manifest["split"] == "val").any() else data.split("test")
    identity = fingerprint(asdict(cfg), ft, file_sha256(paths.prepared / "manifest.csv"))

    torch.manual_seed(int(ft["seed"]))
    detector = RegionDetector(cfg).to(device)
    trainable = [p for p in detector.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=ft["lr"], momentum=ft["momentum"], weight_decay=ft["weight_decay"])
    start_epoch, history, resumed_from = 0, [], None
    state = load_checkpoint(paths.checkpoint, map_location=device)
    if state is not None and state.get("fingerprint") == identity:
        detector.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, resumed_from = int(state["epoch"]), list(state["history"]), int(state["epoch"])
        print(f"resuming from {paths.checkpoint} after epoch {start_epoch}", file=sys.stderr)
    elif state is not None:
        print(f"{paths.checkpoint} was made with other params or data; starting afresh", file=sys.stderr)

    dataset = DetectionDataset(train, hflip=bool(ft["hflip"]), seed=int(ft["seed"]))
    steps_per_epoch = (len(dataset) + ft["batch_size"] - 1) // ft["batch_size"]
    with tracking.stage_run(params, "finetune_detector", {"detector": asdict(cfg), "finetune": ft}) as mlflow:
        mlflow.log_param("device", str(device))
        for epoch in range(start_epoch, int(ft["epochs"])):
            detector.train()
            order = torch.Generator().manual_seed(int(ft["seed"]) * 1000 + epoch)
            loader = DataLoader(
                dataset, batch_size=ft["batch_size"], shuffle=True, generator=order, collate_fn=collate_lists
            )
            totals: dict[str, float] = {}
            for step, (images, targets) in enumerate(
                tqdm(loader, desc=f"detector epoch {epoch + 1}", leave=False, disable=None)
            ):
                global_step = epoch * steps_per_epoch + step
                for group in optimizer.param_groups:
                    group["lr"] = ft["lr"] * min(1.0, (global_step + 1) / max(1, ft["warmup_steps"]))
                images = [im.to(device) for im in images]
                targets = [{"boxes": t["boxes"].to(device)} for t in targets]
                losses = detector(images, targets)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise ConfigError(f"detector loss became {loss.item()} at epoch {epoch + 1}; lower finetune.lr")
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, ft["grad_clip"])
                optimizer.step()
                for k, v in {"loss": loss, **losses}.items():
                    totals[k] = totals.get(k, 0.0) + v.item()
            epoch_metrics = {k: v / max(1, steps_per_epoch) for k, v in totals.items()}
            history.append(epoch_metrics)
            mlflow.log_metrics(epoch_metrics, step=epoch + 1)
            save_checkpoint(
                paths.checkpoint,
                {
                    "fingerprint": identity,
                    "epoch": epoch + 1,
                    "history": history,
                    "model": detector.state_dict(),
                    "optimizer": optimizer.state_dict(),
                },
            )
            print(f"detector epoch {epoch + 1}/{ft['epochs']}: loss {epoch_metrics['loss']:.4f}", file=sys.stderr)

        recall = evaluate_recall(detector, holdout, device, (cfg.top_k, 2))
        recall_k, recall_2 = recall[cfg.top_k], recall[2]
        metrics = {
            "epochs": int(ft["epochs"]),
            "resumed_from_epoch": resumed_from,
            "final_loss": history[-1]["loss"] if history else None,
            "loss_per_epoch": [h["loss"] for h in history],
            f"recall_at_{cfg.top_k}": recall_k,
            "recall_at_2": recall_2,
            "holdout_split": str(holdout.manifest["split"].iloc[0]) if len(holdout.manifest) else None,
            "device": str(device),
        }
        mlflow.log_metrics({f"recall_at_{cfg.top_k}": recall_k, "recall_at_2": recall_2})
    save_detector(detector, paths.model, {"fingerprint": identity})
    write_json_atomic(paths.metrics, metrics)
    return metrics
