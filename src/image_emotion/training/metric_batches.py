"""Class-balanced mini-batches for seed 002's metric learning.

The sentiment constraint needs, in every mini-batch, images of the same emotion, of related emotions and of
the opposite polarity; the paper trains "using batches of 128, which ensures that at least 8 images are
contained for each emotion" (seed 002 lines 462-464). ``class_balanced_batches`` makes one epoch of such
batches. Under torchrun they are the global batches: every rank draws the same ones from its copy of the same
generator and trains on its slice of each (``training/distributed.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from image_emotion.errors import ConfigError


def class_balanced_batches(
    labels: Tensor, batch_size: int, min_per_class: int = 8, generator: torch.Generator | None = None
) -> list[Tensor]:
    """One epoch's mini-batches of indices into ``labels (N,)``: int64 tensors of ``b <= batch_size`` each.

    Every batch holds every class that has images, ``min_per_class`` of each class that has at least
    ``min_per_class`` images per batch to give, and no index appears twice in an epoch. Hence the number of
    batches is ``min(ceil(N / batch_size), n_c // min_per_class for each class c)``: a scarce class ends the
    epoch early, and the images of the other classes that do not fit are left out of this epoch (a different
    random share each epoch, as the generator moves on). The rest of each batch is filled with the other
    images drawn uniformly, so the batches have near-equal sizes (they differ by at most one).

    A class with fewer than ``min_per_class`` images cannot reach the minimum in any batch: it caps the epoch
    at ``n_c`` batches and gives ``n_c // batches`` of its images to each (at least one). Drop such classes
    beforehand if that makes the epoch too short. Raises ``ConfigError`` if ``batch_size`` cannot hold
    ``min_per_class`` images of every class.
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point:
        raise ConfigError(f"labels must be a 1-D tensor of class ids, got shape {tuple(labels.shape)}")
    if batch_size < 1 or min_per_class < 1:
        raise ConfigError(f"batch_size and min_per_class must be >= 1, got {batch_size} and {min_per_class}")
    n = len(labels)
    if n == 0:
        return []
    classes, counts = torch.unique(labels.cpu(), return_counts=True)
    if batch_size < len(classes) * min_per_class:
        raise ConfigError(
            f"batch_size {batch_size} cannot hold {min_per_class} images of each of {len(classes)} classes; "
            f"use at least {len(classes) * min_per_class}"
        )
    counts = counts.tolist()
    caps = [c // min_per_class if c >= min_per_class else c for c in counts]
    n_batches = max(1, min(math.ceil(n / batch_size), *caps))

    reserved, leftover = [], []
    for cls, count in zip(classes.tolist(), counts, strict=True):
        members = (labels.cpu() == cls).nonzero().squeeze(1)
        members = members[torch.randperm(count, generator=generator)]
        quota = min(min_per_class, count // n_batches)
        reserved.append(members[: quota * n_batches].view(n_batches, quota))
        leftover.append(members[quota * n_batches :])
    pool = torch.cat(leftover)
    pool = pool[torch.randperm(len(pool), generator=generator)]
    room = batch_size - sum(r.shape[1] for r in reserved)
    fill = torch.tensor_split(pool[: min(len(pool), n_batches * room)], n_batches)

    out = []
    for b in range(n_batches):
        batch = torch.cat([r[b] for r in reserved] + [fill[b]])
        out.append(batch[torch.randperm(len(batch), generator=generator)])
    return out
