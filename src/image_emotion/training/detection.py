"""Training a detector for some epochs, resumably: the loop the object pre-training and the emotional
fine-tuning share.

SGD with linear warm-up and gradient clipping over the trainable parameters; a checkpoint after every epoch
(written atomically, before anything is logged, so a tracking outage loses no epoch) holding the model, the
optimizer and every random state (torch, CUDA, numpy, python, the flip generator). A checkpoint with the
same ``identity`` (params, data and code) resumes; each epoch's image order depends only on the seed and the
epoch, so a resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import ast
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from image_emotion.config import DetectorTraining
from image_emotion.data.torch_data import DetectionDataset, collate_lists
from image_emotion.errors import ConfigError
from image_emotion.files import load_checkpoint, save_checkpoint

LossFn = Callable[[list[Tensor], list[dict[str, Tensor]]], dict[str, Tensor]]


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


def train_detector(
    model: nn.Module,
    dataset: DetectionDataset,
    hp: DetectorTraining,
    losses_of: LossFn,
    checkpoint: Path,
    identity: str,
    device: torch.device,
    mlflow: Any,
    section: str,
) -> tuple[list[dict[str, float]], int | None]:
    """Train ``model`` on ``dataset`` for ``hp.epochs`` epochs (resuming from ``checkpoint`` when it matches
    ``identity``); ``losses_of(images, targets)`` gives the loss terms. Returns (mean losses per epoch, the
    epoch resumed after or None). ``section`` names the params section in error messages."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    start_epoch, history, resumed_from = 0, [], None
    state = load_checkpoint(checkpoint, map_location=device)
    if state is not None and state.get("fingerprint") == identity and int(state["epoch"]) <= hp.epochs:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_states(state["rng"])
        dataset.generator.set_state(state["rng"]["flips"].cpu())
        start_epoch, history, resumed_from = int(state["epoch"]), list(state["history"]), int(state["epoch"])
        print(f"resuming from {checkpoint} after epoch {start_epoch}", file=sys.stderr)
    elif state is not None:
        reason = "other params, data or code" if state.get("fingerprint") != identity else "more epochs"
        print(f"{checkpoint} was made with {reason}; starting afresh", file=sys.stderr)

    steps_per_epoch = (len(dataset) + hp.batch_size - 1) // hp.batch_size
    for epoch in range(start_epoch, hp.epochs):
        model.train()
        order = torch.Generator().manual_seed(hp.seed * 1000 + epoch)
        loader = DataLoader(dataset, batch_size=hp.batch_size, shuffle=True, generator=order, collate_fn=collate_lists)
        totals: dict[str, float] = {}
        for step, (images, targets) in enumerate(tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=None)):
            global_step = epoch * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = hp.lr * min(1.0, (global_step + 1) / max(1, hp.warmup_steps))
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            losses = losses_of(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise ConfigError(f"detector loss became {loss.item()} at epoch {epoch + 1}; lower {section}.lr")
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, hp.grad_clip)
            optimizer.step()
            for k, v in {"loss": loss, **losses}.items():
                totals[k] = totals.get(k, 0.0) + v.item()
        epoch_metrics = {k: v / max(1, steps_per_epoch) for k, v in totals.items()}
        history.append(epoch_metrics)
        save_checkpoint(
            checkpoint,
            {
                "fingerprint": identity,
                "epoch": epoch + 1,
                "history": history,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": {**rng_states(), "flips": dataset.generator.get_state()},
            },
        )
        mlflow.log_metrics(epoch_metrics, step=epoch + 1)  # after the checkpoint: a tracking outage loses no epoch
        print(f"{section} epoch {epoch + 1}/{hp.epochs}: loss {epoch_metrics['loss']:.4f}", file=sys.stderr)
    return history, resumed_from
