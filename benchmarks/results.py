"""The one machine-readable line a benchmark prints per device, beside its human-readable output, so that
``gpu_suite.py`` can gather every benchmark's figures into one table.

A figure's name ends in its unit, which says which way is better: a time (``ms/image``, ``s``, ``s/epoch``,
``ms``) is better lower, a rate (``images/s``) better higher, a ratio (``x``) is a comparison inside one device.
"""

from __future__ import annotations

import json

PREFIX = "RESULT "
TIME_UNITS = ("ms/image", "s/epoch", "ms", "s")
RATE_UNITS = ("images/s",)
RATIO_UNITS = ("x",)


def emit(benchmark: str, device: str, figures: dict[str, float]) -> None:
    """Print ``RESULT {"benchmark": ..., "device": "cpu"|"cuda", "figures": {name: value}}`` on one line."""
    for name in figures:
        unit(name)  # every name carries a known unit
    print(PREFIX + json.dumps({"benchmark": benchmark, "device": device, "figures": figures}), flush=True)


def parse(output: str) -> list[dict]:
    """Every ``RESULT`` line of a benchmark's standard output, in order."""
    return [json.loads(line[len(PREFIX) :]) for line in output.splitlines() if line.startswith(PREFIX)]


def unit(name: str) -> str:
    """The unit a figure's name ends in (its last word); a name without a known unit is a programming error."""
    last = name.rsplit(" ", 1)[-1]
    if last not in (*TIME_UNITS, *RATE_UNITS, *RATIO_UNITS):
        raise ValueError(f"figure {name!r} does not end in a unit ({', '.join(TIME_UNITS + RATE_UNITS + RATIO_UNITS)})")
    return last


def speed_up(name: str, cpu: float, cuda: float) -> float | None:
    """How many times faster CUDA is than the CPU on this figure (None for a ratio, which compares within a
    device, or a zero)."""
    kind = unit(name)
    if kind in RATIO_UNITS or not cpu or not cuda:
        return None
    return cpu / cuda if kind in TIME_UNITS else cuda / cpu
