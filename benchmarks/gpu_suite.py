"""Every benchmark that has a CUDA path, at sizes that take a few minutes on one GPU, with the CPU baseline in the
same run, gathered into one table of figures and CUDA's speed-up over the CPU. Meant for the day a GPU is lent:
one command collects every figure at once.

    python benchmarks/gpu_suite.py [--only NAME ...] [--cpu-only] [--out DIR] [--timeout 600]

Each benchmark runs in its own process (a fresh CUDA context, its own peak memory), once per device; its
``RESULT`` lines (``benchmarks/results.py``) are the table's cells, and its whole output is kept under ``--out``.
Without a GPU, one line says so and the CPU column alone is measured. The λ sweep and serving read a ``dvc repro``
of this checkout (the cached features, the registered champion); without them they are listed as skipped, with
the command that makes them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from results import parse, speed_up

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script: its arguments at the suite's sizes, how it is told the device, and the files of a
    ``dvc repro`` it needs (relative to the repository)."""

    name: str
    script: str
    args: tuple[str, ...]
    device_flag: str = "--device"  # "" when the script picks the device itself (CUDA when there is one)
    needs: tuple[str, ...] = ()
    makes_needs: str = ""


SUITE = (
    Benchmark("detector", "detector_training.py", ("--images", "32", "--size", "160")),
    Benchmark("inference", "inference.py", ("--images", "16", "--repeats", "3", "--batch", "1")),
    Benchmark("inference-batch", "inference.py", ("--images", "16", "--repeats", "3", "--batch", "8")),
    Benchmark(
        "lambda-sweep",
        "lambda_sweep.py",
        ("--sample", "32"),
        needs=("data/prepared/main", "data/features/main", "models/detector/detector.pt", "models/objects/detector.pt"),
        makes_needs="dvc repro extract_main",
    ),
    Benchmark("metric", "metric_training.py", ("--images", "128", "--epochs", "1")),
    Benchmark("generative", "generative.py", ("--images", "32", "--steps", "5")),
    Benchmark(
        "serving",
        "serving.py",
        ("--images", "16", "--batches", "1", "16", "--repeats", "2"),
        device_flag="",
        needs=("mlflow.db", "data/prepared/main"),
        makes_needs="dvc repro register",
    ),
)


def cuda_line() -> tuple[bool, str]:
    """Whether torch sees a GPU here, and the line that says which (or why not)."""
    import torch

    if torch.cuda.is_available():
        return True, f"CUDA: {torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return False, (
        f"no CUDA device here (torch {torch.__version__}, {built}): measuring the CPU column only; "
        "on a machine with a GPU the same command adds the CUDA column and its speed-ups"
    )


def run_one(bench: Benchmark, device: str, out: Path, timeout: float) -> tuple[list[dict], str]:
    """Run ``bench`` on ``device``; its RESULT records and a status word (ok, failed, timeout). The output is kept
    in ``out/<name>.<device>.log``."""
    command = [sys.executable, str(HERE / bench.script), *bench.args]
    env = dict(os.environ)
    if bench.device_flag:
        command += [bench.device_flag, device]
    elif device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the script picks CUDA when it sees one: hide it for the baseline
    log = out / f"{bench.name}.{device}.log"
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        log.write_text(str(exc.stdout or "") + str(exc.stderr or ""))
        return [], "timeout"
    log.write_text(done.stdout + done.stderr)
    return parse(done.stdout), "ok" if done.returncode == 0 else f"failed (exit {done.returncode}, see {log})"


def table(records: list[dict]) -> list[str]:
    """One row a (benchmark, figure): the CPU figure, the CUDA figure and CUDA's speed-up where both exist."""
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for record in records:
        for figure, value in record["figures"].items():
            cells.setdefault((record["benchmark"], figure), {})[record["device"]] = value
    rows = [f"| {'benchmark':<22} | {'figure':<40} | {'cpu':>10} | {'cuda':>10} | {'cuda speed-up':>13} |"]
    rows.append("|" + "|".join("-" * (w + 2) for w in (22, 40, 10, 10, 13)) + "|")
    for (benchmark, figure), by_device in cells.items():
        cpu, cuda = by_device.get("cpu"), by_device.get("cuda")
        gain = speed_up(figure, cpu, cuda) if cpu is not None and cuda is not None else None
        shown = [f"{v:10.3g}" if v is not None else f"{'—':>10}" for v in (cpu, cuda)]
        rows.append(
            f"| {benchmark:<22} | {figure:<40} | {shown[0]} | {shown[1]} | "
            + (f"{gain:12.2f}×" if gain is not None else f"{'—':>13}")
            + " |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=[b.name for b in SUITE], help="these benchmarks alone")
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when there is a GPU")
    parser.add_argument("--out", type=Path, default=None, help="keep every benchmark's output here")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a benchmark may take on one device")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-suite-"))
    out.mkdir(parents=True, exist_ok=True)
    has_cuda, line = cuda_line()
    print(line, flush=True)
    devices = ["cpu"] + (["cuda"] if has_cuda and not args.cpu_only else [])
    records: list[dict] = []
    failures = 0
    for bench in SUITE:
        if args.only and bench.name not in args.only:
            continue
        missing = [n for n in bench.needs if not (REPO / n).exists()]
        if missing:
            print(f"{bench.name}: skipped, {', '.join(missing)} missing (`{bench.makes_needs}` makes them)")
            continue
        for device in devices:
            start = time.perf_counter()
            found, status = run_one(bench, device, out, args.timeout)
            records += found
            if status != "ok" or not found:
                failures += 1
            print(f"{bench.name} on {device}: {status}, {time.perf_counter() - start:.0f} s", flush=True)
    print("\n".join(["", *table(records), "", f"every benchmark's output: {out}"]))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
