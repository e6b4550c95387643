"""Data-parallel training under ``torchrun``: one process per GPU (or CPU share), one global batch split over them.

``torchrun --nproc-per-node N -m image_emotion.cli finetune-detector ...`` (or ``train-metric``) starts N copies of
the stage; torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each.
``session`` reads them, joins the process group (``nccl`` on CUDA, ``gloo`` on the CPU) and leaves it when the stage
ends. Without torchrun (none of them set, or ``WORLD_SIZE=1``) nothing here does anything: one process, the results
of an ordinary run bit for bit.

The contract that makes N processes train like one:

- **One global batch.** Every rank draws the same seeded global batch (the batch size in params.yaml is the global
  one) and takes its contiguous slice (``split_batch``: sizes differ by at most one, lower ranks take the extra
  rows). DDP averages the ranks' gradients, so the step equals one process's step on the global batch when each
  rank's loss is the mean over its slice and the slices are equal. With unequal slices a plain average would give a
  small slice's rows more weight; the loops scale each rank's loss by ``slice_weight`` (``n_r · N / B``), which
  makes DDP's average the mean over the global batch again. A rank whose slice is empty (a global batch smaller
  than the world) still takes part in the gradient exchange with weight 0.
- **Losses over the whole batch** (metric learning: triplets are mined across the batch) are computed on the
  rows of every rank: ``gather_rows`` all-gathers the ranks' outputs with their autograd graph, every rank
  computes the same loss, and the gradient of each row flows back to the rank that computed it.
- **Random numbers.** The batch order comes from generators seeded by the params and the epoch, identical on
  every rank. Rank 0 keeps the random state one process would have; ranks > 0 reseed their own generators
  (``rank_seed``), so augmentation (flips), dropout and the detector's anchor/proposal samplers differ per rank.
- **I/O.** Only rank 0 (``is_main``) writes checkpoints, models, metrics and MLflow runs (``main_only`` gives the
  other ranks a stand-in that ignores every call); every rank reads a checkpoint to resume.
- **BatchNorm.** ``wrap`` turns BatchNorm layers into ``SyncBatchNorm`` on CUDA, whose statistics are those of the
  global batch. torch has no CPU SyncBatchNorm: on the CPU each rank normalises with its slice's statistics (the
  detector's backbone uses frozen BatchNorm and the metric network's frozen backbone runs in eval mode, so the
  default trainings have no BatchNorm in training mode).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from image_emotion.device import pick_device
from image_emotion.errors import ConfigError

T = TypeVar("T")
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets in every process


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a torchrun launch (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launch_env(environ: Mapping[str, str] | None = None) -> Launch:
    """The torchrun variables of ``environ`` (default: ``os.environ``); none set: one process. Values that
    cannot come from torchrun (a rank outside the world, a missing master address) are a ``ConfigError``."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return Launch()
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
        port = int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else None
    except ValueError:
        shown = {k: env.get(k) for k in ENV}
        raise ConfigError(f"torchrun variables are not whole numbers: {shown}; launch with torchrun") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local} is no process of a torchrun launch")
    if world > 1 and (not env.get("MASTER_ADDR") or port is None):
        raise ConfigError(f"WORLD_SIZE={world} without MASTER_ADDR and MASTER_PORT; launch with torchrun")
    return Launch(rank, world, local, env.get("MASTER_ADDR"), port)


def backend_for(device: torch.device) -> str:
    """The collective backend for ``device``: ``nccl`` for CUDA, ``gloo`` for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def device_for(preference: str, launch: Launch) -> torch.device:
    """``pick_device(preference)``; under a multi-process launch on CUDA, GPU ``LOCAL_RANK`` (made current)."""
    device = pick_device(preference)
    if device.type != "cuda" or not launch.distributed:
        return device
    if launch.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK {launch.local_rank} but {torch.cuda.device_count()} GPUs visible; "
            "start at most one process per GPU (torchrun --nproc-per-node gpu)"
        )
    torch.cuda.set_device(launch.local_rank)
    return torch.device("cuda", launch.local_rank)


@contextmanager
def session(preference: str = "auto") -> Iterator[torch.device]:
    """The device this process trains on, inside the process group of a torchrun launch: joined on entry (unless
    already joined) and left on exit, errors included. Without torchrun it only yields ``pick_device(preference)``."""
    launch = launch_env()
    device = device_for(preference, launch)
    if not launch.distributed or dist.is_initialized():
        yield device
        return
    dist.init_process_group(backend_for(device), rank=launch.rank, world_size=launch.world_size)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank in the process group (0 outside one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes training together (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes outputs: rank 0 of the process group, or of the torchrun launch outside it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return launch_env().rank == 0


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in one process)."""
    if world_size() > 1:
        dist.barrier()


def slice_sizes(n: int, world: int) -> list[int]:
    """How many of a global batch's ``n`` rows each of ``world`` ranks takes: ``n // world``, plus one for the
    first ``n % world`` ranks (e.g. 5 rows on 2 ranks: ``[3, 2]``; 1 row on 2 ranks: ``[1, 0]``)."""
    if world < 1 or n < 0:
        raise ValueError(f"cannot split {n} rows over {world} ranks")
    return [n // world + (1 if r < n % world else 0) for r in range(world)]


def split_batch(batch: Sequence[T], rank: int, world: int) -> Sequence[T]:
    """Rank ``rank``'s contiguous slice of the global ``batch`` (a list or a 1-D index tensor): the rows from
    ``sum(slice_sizes[:rank])`` on, ``slice_sizes[rank]`` of them. Every rank derives its slice from the same
    global batch, so the slices cover it exactly once, in order."""
    sizes = slice_sizes(len(batch), world)
    start = sum(sizes[:rank])
    return batch[start : start + sizes[rank]]


def slice_weight(mine: int, batch: int, world: int) -> float:
    """The factor on a rank's mean loss over its ``mine`` of ``batch`` rows that makes DDP's average over ``world``
    ranks the mean over the whole batch: ``mine · world / batch`` (1 for equal slices, 0 for an empty one)."""
    return mine * world / batch


def rank_seed(seed: int, rank: int) -> int:
    """A seed for rank ``rank``'s own random numbers, derived from ``seed`` (63 bits, different for each rank)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


class _Forward(nn.Module):
    """``forward`` as the forward pass of ``module``'s parameters, so DDP can hook them."""

    def __init__(self, module: nn.Module, forward: Callable[..., Any]) -> None:
        super().__init__()
        self.module = module
        self.run = forward

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.run(*args, **kwargs)


def wrap(
    module: nn.Module,
    device: torch.device,
    forward: Callable[..., Any] | None = None,
    find_unused_parameters: bool = False,
) -> Callable[..., Any]:
    """``forward`` (default: ``module`` itself) made a DistributedDataParallel step over ``module``'s trainable
    parameters: their gradients are averaged over the ranks during ``backward``. In one process it returns
    ``forward`` unchanged. On CUDA the module's BatchNorm layers become ``SyncBatchNorm`` (in place: the parameters
    and buffers stay the same tensors). ``find_unused_parameters``: some trainable parameters may get no gradient in
    a step (DDP then finds them from the returned tensors; return only the tensors the loss uses)."""
    forward = module if forward is None else forward
    if world_size() == 1:
        return forward
    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return nn.parallel.DistributedDataParallel(
        _Forward(module, forward),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


def gather_rows(local: Tensor, sizes: Sequence[int]) -> Tensor:
    """The rows of every rank's ``local`` ``(sizes[rank], ...)`` joined in rank order: ``(sum(sizes), ...)``, on
    every rank. Differentiable: ``backward`` sends each row's gradient to the rank that computed it, summed over the
    ranks (every rank computes the same loss from the joined rows, so the sum is ``world`` times that loss's
    gradient, and DDP's average over the ranks brings it back to one). One process: ``local`` itself."""
    world = world_size()
    if world == 1:
        return local
    from torch.distributed.nn.functional import all_gather

    width = max(sizes)
    padded = torch.cat([local, local.new_zeros(width - len(local), *local.shape[1:])]) if len(local) < width else local
    parts = all_gather(padded)  # all_gather needs equal shapes: the shorter slices are padded with zero rows
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])


def mean_over_ranks(values: Mapping[str, Tensor], weight: float) -> dict[str, Tensor]:
    """The global batch's mean of each per-rank mean in ``values`` (scalars), weighted as ``slice_weight`` says:
    ``sum over ranks of weight · value / world``, the same on every rank (no gradient)."""
    keys = list(values)
    local = torch.stack([values[k].detach().float() for k in keys]) * weight
    dist.all_reduce(local)
    local /= world_size()
    return {k: local[i] for i, k in enumerate(keys)}


def gather_objects(obj: T) -> list[T]:
    """``obj`` of every rank (picklable), in rank order, on every rank; ``[obj]`` in one process."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


class _Silent:
    """Stands in for the ``mlflow`` module on ranks other than 0: every call is accepted and does nothing."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _nothing


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


@contextmanager
def main_only(context: AbstractContextManager[T]) -> Iterator[T | Any]:
    """``context`` entered on rank 0 only (an MLflow run: ``with main_only(tracking.stage_run(...)) as mlflow``);
    the other ranks get an object on which every method call does nothing."""
    if is_main():
        with context as value:
            yield value
    else:
        yield _Silent()
