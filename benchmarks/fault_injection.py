"""Fault injection: every training stage killed with SIGKILL at random points, then ``dvc repro`` completes and gives
the metrics of an uninterrupted run.

Two copies of the repository's tracked files run the pipeline with the smoke configuration (the smallest that
trains every model, ``image_emotion.smoke``) and the same thread count:

- **A** runs ``dvc repro`` once, uninterrupted (its stage times set the kill windows);
- **B**, for each training stage in pipeline order, starts ``dvc repro <stage>`` ``--kills`` times and kills its
  whole process group (``dvc`` and the stage) with SIGKILL at a random moment inside that stage's run (seeded),
  then lets ``dvc repro <stage>`` finish; at the end a plain ``dvc repro`` must find nothing left to do but what
  follows the last stage.

Prints each kill (stage, moment, whether the stage had written a checkpoint), the resumes the stages reported
("resuming from"), and every metrics file of B against A: equal apart from timings and the resume bookkeeping.
Exit status 1 when any metrics file differs or B's final ``dvc repro`` fails.

    python benchmarks/fault_injection.py [--kills 3] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from image_emotion.config import load_config, render_params
from image_emotion.smoke import SMOKE_OVERRIDES
from image_emotion.stages.paths import FinetunePaths, PretrainPaths, TrainGenerativePaths

REPO = Path(__file__).resolve().parents[1]
TRAINING_STAGES = ("pretrain_objects", "finetune_detector", "train_classifier", "train_metric", "train_generative")
CHECKPOINTS = {  # the stages that checkpoint every epoch: killed after a checkpoint was written, so they resume
    "pretrain_objects": PretrainPaths.checkpoint,
    "finetune_detector": FinetunePaths.checkpoint,
    "train_generative": TrainGenerativePaths.checkpoint,
}
# the detector trains a few epochs more than the smoke run's, so that most kills land after a checkpoint was written
EPOCHS = ["pretrain.epochs=3", "finetune.epochs=4", "finetune.max_images=32"]
EPOCH_COUNT = {"pretrain_objects": 3, "finetune_detector": 4, "train_generative": 3}  # generative: the smoke run's
VOLATILE = {"seconds", "resumed_from_epoch", "device", "run_id", "timestamp", "duration_s"}  # not results


def project(where: Path, overrides: list[str]) -> Path:
    """The repository's tracked files copied to ``where`` as a git repository of its own (DVC needs one), with
    params.yaml set to the smoke configuration."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = REPO / name
        if source.is_file() and not name.startswith(("metrics/", "dvc.lock")):
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, where / name)
    config = load_config(REPO / "params.yaml", [*SMOKE_OVERRIDES, *overrides])
    (where / "params.yaml").write_text(render_params(config))
    env = {**os.environ, "GIT_AUTHOR_NAME": "f", "GIT_AUTHOR_EMAIL": "f@x", "GIT_COMMITTER_NAME": "f",
           "GIT_COMMITTER_EMAIL": "f@x"}  # fmt: skip
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=where, check=True, env=env)
    return where


def environment(where: Path) -> dict[str, str]:
    """The stages' environment: this checkout's console scripts, the copy's own MLflow store."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(where / "src"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{where / 'mlflow.db'}",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def stage_times(log: Path) -> dict[str, float]:
    """Each stage's start in seconds from the run's start, read from the log's ``Running stage`` lines (stamped)."""
    out = {}
    for line in log.read_text().splitlines():
        m = re.match(r"^(\d+\.\d+) Running stage '([^'@]+)", line)
        if m:
            out.setdefault(m.group(2), float(m.group(1)))
    return out


def stamped_repro(
    where: Path, *targets: str, log: Path, kill: tuple[str, float] | None = None
) -> tuple[int | None, float]:
    """``dvc repro`` with each output line stamped by its time from the start; with ``kill=(stage, seconds)``, its
    whole process group (dvc and the stage's command) is killed with SIGKILL that many seconds after ``stage``
    starts, or, for a stage that checkpoints, that many seconds after it writes its first checkpoint of this run
    (status None when killed; the stage may finish first)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dvc"), "repro", *targets], cwd=where, env=environment(where),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    os.set_blocking(proc.stdout.fileno(), False)
    began: float | None = None
    began_wall, checkpointed = 0.0, False
    with log.open("a") as out:
        while True:
            line = proc.stdout.readline()
            if line:
                out.write(f"{time.monotonic() - start:.2f} {line}")
                if kill is not None and began is None and line.startswith(f"Running stage '{kill[0]}'"):
                    began, began_wall = time.monotonic(), time.time()
                continue
            if began is not None and kill[0] in CHECKPOINTS and not checkpointed:
                saved = where / CHECKPOINTS[kill[0]]
                if saved.is_file() and saved.stat().st_mtime >= began_wall:
                    checkpointed, began = True, time.monotonic()  # count the delay from this checkpoint
            if proc.poll() is not None:
                out.write(proc.stdout.read() or "")
                return proc.returncode, time.monotonic() - start
            waiting = kill is not None and kill[0] in CHECKPOINTS and not checkpointed
            if began is not None and not waiting and time.monotonic() - began >= kill[1]:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                out.write(f"{time.monotonic() - start:.2f} -- SIGKILL {kill[1]:.1f} s into {kill[0]}\n")
                return None, time.monotonic() - start
            time.sleep(0.05)


def results(where: Path) -> dict[str, Any]:
    """Every metrics JSON of ``where`` without its volatile keys."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in VOLATILE}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return {
        str(p.relative_to(where)): clean(json.loads(p.read_text())) for p in sorted((where / "metrics").rglob("*.json"))
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs a training stage gets before it may finish")
    parser.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
        help=f"over the smoke configuration (default: {' '.join(EPOCHS)})",
    )  # fmt: skip
    parser.add_argument("--keep", type=Path, default=None, help="keep both copies here (default: a temporary folder)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="fault-")) if args.keep is None else args.keep
    overrides = EPOCHS if args.overrides is None else args.overrides
    a, b = project(root / "uninterrupted", overrides), project(root / "killed", overrides)
    log_a, log_b = root / "uninterrupted.log", root / "killed.log"
    code, seconds = stamped_repro(a, log=log_a)
    if code != 0:
        print(f"the uninterrupted run failed; see {log_a}", file=sys.stderr)
        return 1
    starts = stage_times(log_a)
    order = sorted(starts, key=starts.get)
    print(f"uninterrupted dvc repro: {seconds:.0f} s")
    kills = 0
    for stage in TRAINING_STAGES:
        after = order[order.index(stage) + 1] if order.index(stage) + 1 < len(order) else None
        length = (starts[after] if after else seconds) - starts[stage]  # the stage's own run in A
        for i in range(args.kills):
            # a checkpointing stage: up to one epoch after its first checkpoint; the others anywhere in their run
            if stage in CHECKPOINTS:
                moment = rng.uniform(0.0, 1.0) * length / EPOCH_COUNT[stage]
            else:
                moment = rng.uniform(0.3, 0.95) * length
            lines_before = len(log_b.read_text().splitlines()) if log_b.exists() else 0
            code, _ = stamped_repro(b, stage, log=log_b, kill=(stage, moment))
            tail = "\n".join(log_b.read_text().splitlines()[lines_before:])
            checkpoint = any((b / "checkpoints").rglob("*.pt")) if (b / "checkpoints").is_dir() else False
            kills += code is None
            print(
                f"{stage}: kill {i + 1} {moment:.1f} s into the stage "
                f"({'killed' if code is None else f'it finished first, status {code}'}); "
                f"resumed: {'yes' if 'resuming from' in tail else 'no'}; a checkpoint on disk: {checkpoint}",
                flush=True,
            )
        code, _ = stamped_repro(b, stage, log=log_b)
        if code != 0:
            print(f"{stage}: did not complete after the kills; see {log_b}", file=sys.stderr)
            return 1
    code, _ = stamped_repro(b, log=log_b)
    if code != 0:
        print(f"the killed copy's final dvc repro failed; see {log_b}", file=sys.stderr)
        return 1
    ra, rb = results(a), results(b)
    differ = sorted(k for k in ra.keys() | rb.keys() if ra.get(k) != rb.get(k))
    total_resumes = log_b.read_text().count("resuming from")
    print(
        f"\n{kills} SIGKILLs delivered inside {len(TRAINING_STAGES)} training stages, {total_resumes} resumes from a "
        "checkpoint reported (the detector stages say so; the generative one resumes silently; the classifier and "
        f"metric heads restart); metrics files equal to the uninterrupted run's: {len(ra) - len(differ)} of {len(ra)}"
    )
    for name in differ:
        print(f"  differs: {name}")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
