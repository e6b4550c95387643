"""Serving cost of the registered seed-000 model: in-process ``EmotionPredictor.predict`` vs HTTP through
``mlflow models serve``, measured in one run on the same images.

The model is loaded once in this process (``mlflow.pyfunc.load_model``; its ``EmotionPredictor`` is called
directly) and served by a ``mlflow models serve --env-manager local`` this script starts on a free loopback
port and stops at the end. For each batch size, requests of that many base64-encoded test images go to both,
taking turns within every repeat (after a warm-up request each), so a slow spell of the machine hits both alike.
A request's latency is, in process, ``predict`` on a ready DataFrame of base64 cells and, over HTTP, POST of a
ready ``dataframe_split`` JSON body on a kept-alive connection until the JSON answer is parsed. Prints
images/s and p50/p95 latency per request for each, and the HTTP / in-process ratios.

Works in the repository after ``dvc repro`` (the ``register`` stage registers ``image-emotion@champion`` into
``sqlite:///mlflow.db``):

    python benchmarks/serving.py [--model-uri models:/image-emotion@champion] [--tracking-uri URI]
        [--prepared data/prepared/main] [--images 16] [--batches 1 16] [--repeats 3] [--threads N]

The tracking URI is ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``.

Run it on an otherwise idle machine: with another CPU-bound job beside it, the in-process path at torch's
default threads (one a core) slowed down 3-10x here while the server did not, which inverts the ratio;
``--threads 1`` on both sides stays comparable under such load. With few images, p95 of the large batch is
taken over few requests (the ``requests`` column); raise ``--images`` / ``--repeats`` for firmer tails.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from results import emit

from image_emotion.tracking.model_server import ModelServer, ModelServerError


def _test_images(prepared: Path, n: int) -> list[str]:
    """Base64 text of the first ``n`` test-split images of a prepared dataset."""
    from image_emotion.data.torch_data import PreparedDataset

    test = PreparedDataset.load(prepared).split("test")
    paths = [test.root / p for p in test.manifest["path"].head(n)]
    if not paths:
        sys.exit(f"error: {prepared} has no test images; run `dvc repro prepare` first")
    if len(paths) < n:
        print(f"note: only {len(paths)} test images in {prepared}; using those")
    return [base64.b64encode(p.read_bytes()).decode("ascii") for p in paths]


class HttpClient:
    """POSTs JSON bodies to ``/invocations`` on one kept-alive connection (re-opened when the server closed it:
    uvicorn drops idle connections after 5 s, e.g. while the in-process path takes its turn)."""

    def __init__(self, port: int, timeout_s: float = 300) -> None:
        self.port, self.timeout_s = port, timeout_s
        self.reconnect()

    def reconnect(self) -> None:
        if getattr(self, "conn", None) is not None:
            self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
        self.conn.connect()

    def predict(self, body: bytes, retry: bool = True) -> list[dict]:
        try:
            self.conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
            response = self.conn.getresponse()
            answer = response.read()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            if not retry:
                raise
            self.reconnect()
            return self.predict(body, retry=False)
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {answer[:500]!r}")
        return json.loads(answer)["predictions"]


def _batches(cells: list[str], batch: int) -> list[list[str]]:
    """Requests of ``batch`` images covering every image once (cycling when there are fewer images)."""
    count = max(1, -(-len(cells) // batch))
    return [[cells[(i * batch + j) % len(cells)] for j in range(batch)] for i in range(count)]


def measure(predictor, client: HttpClient, cells: list[str], batch: int, repeats: int) -> dict[str, dict]:
    """Per-request latencies of both paths on the same requests, interleaved within every repeat."""
    requests = _batches(cells, batch)
    frames = [pd.DataFrame({"image": r}) for r in requests]
    bodies = [
        json.dumps({"dataframe_split": {"columns": ["image"], "data": [[c] for c in r]}}).encode() for r in requests
    ]
    # warm-up, and the two paths must agree on what they answer
    expected = predictor.predict(frames[0])
    got = client.predict(bodies[0])
    if [row["label"] for row in got] != expected["label"].tolist():
        raise RuntimeError("HTTP and in-process labels differ: not the same model?")
    paths = {
        "in-process": lambda i: predictor.predict(frames[i]),
        "HTTP": lambda i: client.predict(bodies[i]),
    }
    latencies: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, call in paths.items():
            client.reconnect()  # untimed: a fresh kept-alive connection for this turn
            for i in range(len(requests)):
                start = time.perf_counter()
                call(i)
                latencies[name].append(time.perf_counter() - start)
    return {
        name: {
            "requests": len(lat),
            "images_per_s": batch * len(lat) / sum(lat),
            "p50_ms": 1000 * float(np.percentile(lat, 50)),
            "p95_ms": 1000 * float(np.percentile(lat, 95)),
        }
        for name, lat in latencies.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-uri", default="models:/image-emotion@champion")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared/main"), help="a prepare output")
    parser.add_argument("--images", type=int, default=16, help="test images to send (each batch size covers all)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="images per request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads on both sides (default: torch's own choice)"
    )
    parser.add_argument("--log", type=Path, default=None, help="the server's output (default: a temp file)")
    args = parser.parse_args()

    os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import torch

    extra_env = {}
    if args.threads:
        torch.set_num_threads(args.threads)
        extra_env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    cells = _test_images(args.prepared, args.images)
    model = mlflow.pyfunc.load_model(args.model_uri)
    predictor = model.unwrap_python_model().predictor  # the EmotionPredictor the server runs too
    log = args.log or Path(os.environ.get("TMPDIR", "/tmp")) / f"serving-benchmark-{os.getpid()}.log"
    start = time.perf_counter()
    try:
        server = ModelServer(args.model_uri, args.tracking_uri, log, extra_env)
    except ModelServerError as exc:
        sys.exit(f"error: {exc}")
    started_s = time.perf_counter() - start
    with server:
        client = HttpClient(server.port)
        results = {b: measure(predictor, client, cells, b, args.repeats) for b in args.batches}

    print(
        f"model {args.model_uri} ({args.tracking_uri}); {len(cells)} test images from {args.prepared}, "
        f"{args.repeats} repeats; device {predictor.device}, torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs; server up in {started_s:.1f} s"
    )
    header = f"{'batch':>5}  {'path':<10}  {'requests':>8}  {'images/s':>8}  {'p50 ms':>8}  {'p95 ms':>8}"
    print(header)
    print("-" * len(header))
    for batch, r in results.items():
        for name, m in r.items():
            print(
                f"{batch:>5}  {name:<10}  {m['requests']:>8}  {m['images_per_s']:>8.2f}  "
                f"{m['p50_ms']:>8.1f}  {m['p95_ms']:>8.1f}"
            )
        http, local = r["HTTP"], r["in-process"]
        print(
            f"{batch:>5}  {'HTTP/in-process':<10}  time per image {local['images_per_s'] / http['images_per_s']:.2f}x, "
            f"p50 {http['p50_ms'] / local['p50_ms']:.2f}x, p95 {http['p95_ms'] / local['p95_ms']:.2f}x"
        )
    figures = {f"{path}, batch {b} images/s": m["images_per_s"] for b, r in results.items() for path, m in r.items()}
    emit("serving", torch.device(predictor.device).type, figures)


if __name__ == "__main__":
    main()
