"""What the peak-memory benchmarks share: each measurement in a fresh process, and the table of peaks by scale.

Children run with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_=65536``): with its default, dynamic one,
freed batch buffers stay in the heap and the peak varied by up to 100 MB between identical runs (measured).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

MODES = ("streamed", "memory")


def run_child(args: list[str]) -> dict:
    """``python <args>`` in a fresh process; its last stdout line, a JSON object (images, peak_rss_mb, seconds)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def print_peaks(results: dict[tuple[str, int], dict], scales: list[int], extra: dict[int, str] | None = None) -> None:
    """One row a scale (streamed and in-memory peaks and times, ``extra`` columns first), then the growth."""
    for scale in scales:
        s, m = results["streamed", scale], results["memory", scale]
        print(
            f"{scale:>4}x {s['images']:>7} {(extra or {}).get(scale, '')}{s['peak_rss_mb']:>12.1f} MB streamed "
            f"{m['peak_rss_mb']:>9.1f} MB in memory   {s['seconds']:>7.2f} s streamed {m['seconds']:>7.2f} s in memory"
        )
    lo, hi = min(scales), max(scales)
    for mode in MODES:
        a, b = results[mode, lo], results[mode, hi]
        per_k = (b["peak_rss_mb"] - a["peak_rss_mb"]) / (b["images"] - a["images"]) * 1000
        print(
            f"{mode:>9}: peak at {hi}x / at {lo}x = {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}, "
            f"{per_k:+.2f} MB per 1000 more images"
        )
