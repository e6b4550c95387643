"""Progress of a long loop on the terminal: ``tqdm`` with its rate and ETA, on stderr, and nothing at all when
stderr is not a terminal (``dvc repro`` in CI, kfp pods, a redirected log), where the stages' own one-line
summaries say what happened."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], what: str, show: bool = True, **tqdm_options: object) -> Iterator[T]:
    """``items`` with a progress bar named ``what`` (counted in epochs) while stderr is a terminal and ``show``
    (e.g. rank 0 only); the bar is removed when the loop ends."""
    from tqdm import tqdm

    return iter(
        tqdm(
            items, desc=what, unit="epoch", leave=False, file=sys.stderr, disable=None if show else True, **tqdm_options
        )
    )
