"""Tracking cost of the deployed shape (``mlflow server`` on PostgreSQL with S3 artifacts, over HTTP) against the
local sqlite store, measured in one run on the same operations.

The stack is started here the way ``image-emotion tracking-server start`` starts it (its start and stop are timed
too). Each operation runs against both stores, taking turns within every repeat, so a slow spell of the machine
hits both alike:

- ``run, 5 epochs logged``: a run with 5 steps of ``log_metrics`` of 5 values each (what a training loop does);
- ``stage run``: a stage's bookkeeping, ``stage_run`` of a new pipeline run (find-or-create the parent with every
  param and the data versions, the stage run, its params) then one metric;
- ``artifact``: ``log_artifact`` of a 4 MB file (a small model's weights; to S3 through the server's proxy);
- ``register``: ``register_and_promote`` of an already logged model (registry lock, version, aliases).

Prints the median seconds of each and the HTTP / sqlite ratio:

    python benchmarks/tracking.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow

from image_emotion.config import Config
from image_emotion.tracking import registry, runs
from image_emotion.tracking.stack import TrackingStack, client_env


def _use(uri: str) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)


def operations(work: Path, counter: list[int]) -> dict[str, Callable[[], None]]:
    """The timed operations; each runs against the store ``$MLFLOW_TRACKING_URI`` names."""
    weights = work / "weights.bin"
    weights.write_bytes(os.urandom(4 << 20))

    def epoch() -> None:
        with mlflow.start_run():
            for step in range(5):
                mlflow.log_metrics({f"m{i}": 0.1 * i for i in range(5)}, step=step)

    def stage() -> None:
        counter[0] += 1
        config = Config().with_overrides([f"classifier.seed={counter[0]}"])  # a new pipeline run each time
        with runs.stage_run(config, "evaluate", ("evaluate",)):
            runs.log_metrics({"accuracy": 0.5})

    def artifact() -> None:
        with mlflow.start_run():
            mlflow.log_artifact(str(weights))

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    logged: dict[str, str] = {}

    def register() -> None:
        uri = mlflow.get_tracking_uri()
        if uri not in logged:
            with mlflow.start_run():
                logged[uri] = mlflow.pyfunc.log_model(name="m", python_model=Constant(), pip_requirements=[]).model_uri
        counter[0] += 1
        with mlflow.start_run():
            registry.register_and_promote(
                mlflow, lambda: logged[uri], [weights], "bench",
                {"accuracy": counter[0] / 1e6, "dataset": "synthetic", "label_set": "mikels8"}, 0.0,
            )  # fmt: skip

    return {"run, 5 epochs logged": epoch, "stage run": stage, "artifact 4 MB": artifact, "register": register}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.chdir(work)  # the stage runs read data versions relative to here: none exist, none are hashed
        stack = TrackingStack(work / "tracking")
        began = time.monotonic()
        state = stack.start()
        os.environ.update(client_env(work / "tracking"))  # the stack runs with basic auth
        started = time.monotonic() - began
        stores = {"sqlite": f"sqlite:///{work / 'mlflow.db'}", "http": state.tracking_uri}
        try:
            ops = operations(work, [0])
            times: dict[str, dict[str, list[float]]] = {name: {s: [] for s in stores} for name in ops}
            for name, op in ops.items():
                for uri in stores.values():  # warm-up: first experiment, first model, connections
                    _use(uri)
                    op()
                for _ in range(args.repeats):
                    for store, uri in stores.items():
                        _use(uri)
                        t = time.perf_counter()
                        op()
                        times[name][store].append(time.perf_counter() - t)
        finally:
            began = time.monotonic()
            stack.stop()
            stopped = time.monotonic() - began
    print(f"stack start {started:.1f} s, stop {stopped:.1f} s; median of {args.repeats} after a warm-up")
    print(f"{'operation':<24} {'sqlite s':>9} {'http s':>9} {'http/sqlite':>12}")
    for name, by_store in times.items():
        local, remote = statistics.median(by_store["sqlite"]), statistics.median(by_store["http"])
        print(f"{name:<24} {local:>9.3f} {remote:>9.3f} {remote / local:>11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
