"""Stage ``finetune_detector``: train the emotional-region detector on a manifest with boxes.

SGD with warm-up and gradient clipping (params ``finetune``); a checkpoint after every epoch
(``checkpoints/detector/last.pt``, written atomically). Interrupted, the stage resumes from it when the
checkpoint was made with the same detector/finetune params (the epoch count aside: a longer run continues a
shorter one), the same manifest and the same training code; otherwise it starts afresh. Each epoch's image
order depends only on the seed and the epoch, and the checkpoint holds every random state (torch, CUDA,
numpy, python, the flip generator), so a resumed run ends with the same weights as an uninterrupted one.
Outputs: ``models/detector/detector.pt`` and ``metrics/detector.json`` (loss per epoch, region recall on
the validation split).
"""

from __future__ import annotations

import ast
import random
import sys
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from image_emotion.config import Config
from image_emotion.data import torch_data
from image_emotion.data.torch_data import DetectionDataset, PreparedDataset, collate_lists, load_tensor_image
from image_emotion.device import pick_device
from image_emotion.errors import ConfigError
from image_emotion.files import (
    file_sha256,
    fingerprint,
    load_checkpoint,
    save_checkpoint,
    source_fingerprint,
    write_json_atomic,
)
from image_emotion.models import backbones, region_detector
from image_emotion.models.region_detector import RegionDetector, region_recall, save_detector
from image_emotion.stages.paths import FinetunePaths
from image_emotion.tracking import runs as tracking


def rng_states() -> dict[str, Any]:
    """Every random state the training draws from (the RPN/RoI samplers use torch's global generator)."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {  # tensors and plain values only: checkpoints load with weights_only=True
        "torch": torch.get_rng_state(),
        "numpy": [torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what ``rng_states`` saved: a resumed run draws the same numbers as an uninterrupted one."""
    torch.set_rng_state(states["torch"].cpu())  # a checkpoint loaded onto the GPU brings them there
    key, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state(("MT19937", key.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(ast.literal_eval(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in states["cuda"]])


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


def run(config: Config, paths: FinetunePaths) -> dict[str, Any]:
    """Fine-tune (or resume), save the detector, return the metrics."""
    cfg, ft = config.detector, config.finetune
    device = pick_device(config.device)
    data = PreparedDataset.load(paths.prepared)
    train = data.split("train")
    if ft.max_images and len(train.manifest) > ft.max_images:  # a seeded subset bounds CPU time
        keep = train.manifest.sample(n=ft.max_images, random_state=ft.seed).index
        train = train.subset(train.manifest.index.isin(keep))
    holdout = data.split("val") if (data.manifest["split"] == "val").any() else data.split("test")
    # what the training trajectory depends on; not the epoch count, so a longer run resumes a shorter one
    trajectory = ft.to_dict() | {"epochs": None}
    code = source_fingerprint(sys.modules[__name__], region_detector, backbones, torch_data)
    identity = fingerprint(cfg.to_dict(), trajectory, file_sha256(paths.prepared / "manifest.csv"), code)

    torch.manual_seed(ft.seed)
    detector = RegionDetector(cfg).to(device)
    trainable = [p for p in detector.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay)
    start_epoch, history, resumed_from = 0, [], None
    dataset = DetectionDataset(train, hflip=ft.hflip, seed=ft.seed)
    state = load_checkpoint(paths.checkpoint, map_location=device)
    if state is not None and state.get("fingerprint") == identity and int(state["epoch"]) <= ft.epochs:
        detector.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_states(state["rng"])
        dataset.generator.set_state(state["rng"]["flips"].cpu())
        start_epoch, history, resumed_from = int(state["epoch"]), list(state["history"]), int(state["epoch"])
        print(f"resuming from {paths.checkpoint} after epoch {start_epoch}", file=sys.stderr)
    elif state is not None:
        reason = "other params, data or code" if state.get("fingerprint") != identity else "more epochs"
        print(f"{paths.checkpoint} was made with {reason}; starting afresh", file=sys.stderr)

    steps_per_epoch = (len(dataset) + ft.batch_size - 1) // ft.batch_size
    with tracking.stage_run(config, "finetune_detector", ("detector", "finetune")) as mlflow:
        mlflow.set_tag("device", str(device))
        for epoch in range(start_epoch, ft.epochs):
            detector.train()
            order = torch.Generator().manual_seed(ft.seed * 1000 + epoch)
            loader = DataLoader(
                dataset, batch_size=ft.batch_size, shuffle=True, generator=order, collate_fn=collate_lists
            )
            totals: dict[str, float] = {}
            for step, (images, targets) in enumerate(
                tqdm(loader, desc=f"detector epoch {epoch + 1}", leave=False, disable=None)
            ):
                global_step = epoch * steps_per_epoch + step
                for group in optimizer.param_groups:
                    group["lr"] = ft.lr * min(1.0, (global_step + 1) / max(1, ft.warmup_steps))
                images = [im.to(device) for im in images]
                targets = [{"boxes": t["boxes"].to(device)} for t in targets]
                losses = detector(images, targets)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise ConfigError(f"detector loss became {loss.item()} at epoch {epoch + 1}; lower finetune.lr")
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, ft.grad_clip)
                optimizer.step()
                for k, v in {"loss": loss, **losses}.items():
                    totals[k] = totals.get(k, 0.0) + v.item()
            epoch_metrics = {k: v / max(1, steps_per_epoch) for k, v in totals.items()}
            history.append(epoch_metrics)
            save_checkpoint(
                paths.checkpoint,
                {
                    "fingerprint": identity,
                    "epoch": epoch + 1,
                    "history": history,
                    "model": detector.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": {**rng_states(), "flips": dataset.generator.get_state()},
                },
            )
            mlflow.log_metrics(epoch_metrics, step=epoch + 1)  # after the checkpoint: a tracking outage loses no epoch
            print(f"detector epoch {epoch + 1}/{ft.epochs}: loss {epoch_metrics['loss']:.4f}", file=sys.stderr)

        recall = evaluate_recall(detector, holdout, device, (cfg.top_k, 2))
        recall_k, recall_2 = recall[cfg.top_k], recall[2]
        metrics = {
            "epochs": ft.epochs,
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
