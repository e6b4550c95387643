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
from image_emotion.training import distributed

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


def _rank_rng(state: dict[str, Any], rank: int, world: int) -> dict[str, Any] | None:
    """The random states rank ``rank`` saved in checkpoint ``state`` (rank 0's are ``state["rng"]``, the others'
    ``state["rng_ranks"]`` when the checkpoint was written by as many ranks); None when it has none."""
    if rank == 0:
        return state["rng"]
    ranks = state.get("rng_ranks")
    return ranks[rank] if ranks is not None and len(ranks) == world else None


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
    epoch resumed after or None). ``section`` names the params section in error messages.

    Under torchrun (``training/distributed.py``) ``hp.batch_size`` is the global batch: every rank draws the same
    batch and trains on its slice, its loss scaled by its share (``slice_weight``), the gradients averaged by DDP;
    the logged losses are the global batch's. torchvision's losses are means over the sampled anchors and
    proposals of a batch, i.e. means over images when every image gives the same number of samples (the RPN's 256
    anchors and ``box_batch_size_per_image`` proposals when it has that many candidates); the samplers draw from
    each rank's own generator, so a step matches one process's step in expectation, not draw for draw. Rank 0
    writes the checkpoint (with every rank's random states) and logs; every rank resumes from it."""
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    start_epoch, history, resumed_from = 0, [], None
    state = load_checkpoint(checkpoint, map_location=device)  # every rank resumes from rank 0's checkpoint
    own_rng = None
    if state is not None and state.get("fingerprint") == identity and int(state["epoch"]) <= hp.epochs:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        own_rng = _rank_rng(state, rank, world)
        if own_rng is not None:
            set_rng_states(own_rng)
            dataset.generator.set_state(own_rng["flips"].cpu())
        start_epoch, history, resumed_from = int(state["epoch"]), list(state["history"]), int(state["epoch"])
        if main:
            print(f"resuming from {checkpoint} after epoch {start_epoch}", file=sys.stderr)
    elif state is not None and main:
        reason = "other params, data or code" if state.get("fingerprint") != identity else "more epochs"
        print(f"{checkpoint} was made with {reason}; starting afresh", file=sys.stderr)
    if rank > 0 and own_rng is None:  # rank 0 draws what one process draws; the others their own numbers
        seed = distributed.rank_seed(hp.seed * 1000 + start_epoch, rank)
        torch.manual_seed(seed)
        dataset.generator.manual_seed(seed)
    step_losses = distributed.wrap(model, device, losses_of)

    steps_per_epoch = (len(dataset) + hp.batch_size - 1) // hp.batch_size
    for epoch in range(start_epoch, hp.epochs):
        model.train()
        order = torch.Generator().manual_seed(hp.seed * 1000 + epoch)
        # the global batches' image indices: the same on every rank (and the order a DataLoader of the dataset gives)
        batches = DataLoader(
            range(len(dataset)), batch_size=hp.batch_size, shuffle=True, generator=order, collate_fn=list
        )
        totals: dict[str, float] = {}
        for step, batch in enumerate(
            tqdm(batches, desc=f"epoch {epoch + 1}", leave=False, disable=None if main else True)
        ):
            global_step = epoch * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = hp.lr * min(1.0, (global_step + 1) / max(1, hp.warmup_steps))
            mine = distributed.split_batch(batch, rank, world)
            weight = distributed.slice_weight(len(mine), len(batch), world)
            images, targets = collate_lists([dataset[i] for i in mine or batch[:1]])  # empty: joins with weight 0
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            losses = step_losses(images, targets)
            loss = sum(losses.values())
            logged = {"loss": loss, **losses}
            if world > 1:
                logged = distributed.mean_over_ranks(logged, weight)  # the global batch's, on every rank
                loss = loss * weight
            if not torch.isfinite(logged["loss"]):
                raise ConfigError(
                    f"detector loss became {logged['loss'].item()} at epoch {epoch + 1}; lower {section}.lr"
                )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, hp.grad_clip)
            optimizer.step()
            for k, v in logged.items():
                totals[k] = totals.get(k, 0.0) + v.item()
        epoch_metrics = {k: v / max(1, steps_per_epoch) for k, v in totals.items()}
        history.append(epoch_metrics)
        rng = {**rng_states(), "flips": dataset.generator.get_state()}
        every_rng = distributed.gather_objects(rng)  # a resumed rank continues its own random numbers
        if not main:
            continue
        save_checkpoint(
            checkpoint,
            {
                "fingerprint": identity,
                "epoch": epoch + 1,
                "history": history,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rng,
                **({"rng_ranks": every_rng} if world > 1 else {}),
            },
        )
        mlflow.log_metrics(epoch_metrics, step=epoch + 1)  # after the checkpoint: a tracking outage loses no epoch
        print(f"{section} epoch {epoch + 1}/{hp.epochs}: loss {epoch_metrics['loss']:.4f}", file=sys.stderr)
    return history, resumed_from
