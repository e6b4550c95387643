"""A bounded load test of the served seed-000 model: good clients and adversarial ones at once against one
``mlflow models serve`` on loopback, measured in one run.

Good clients each POST one test image per request in a loop; adversarial clients cycle through requests that
used to exhaust the server (each a few MB at most on the wire):
- ``100 rows``: 100 copies of a test image in one request;
- ``8 x 49 MP``: eight real 7000 x 7000 PNGs (a gradient, ~0.2 MB each encoded; 147 MB each decoded as RGB);
- ``4 x 49 MP``: four of them, within ``serving.max_request_pixels`` (200 MP): must be answered;
- ``16-bit 36 MP``: one 6000 x 6000 16-bit grayscale PNG.
While they run, the RSS of the server's whole process tree is sampled every 20 ms. Printed: peak RSS, good
requests sent / answered 200, their p50 / p95 latency, and each adversarial request's statuses. The run is
bounded: it stops after ``--seconds``, and the server is killed (and the run reported as such) if its RSS
passes ``--rss-cap-gib``, so a model without limits cannot take the machine down.

A model's limits are those it was logged with (its ``model_config``, from ``serving`` in params.yaml); a model
registered before limits existed serves with its own code and none of them, which is the "before" figure:

    python benchmarks/serving_load.py [--model-uri models:/image-emotion@champion] [--tracking-uri URI]
        [--prepared data/prepared/main] [--seconds 30] [--good-clients 3] [--bad-clients 2] [--rss-cap-gib 6]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import io
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from image_emotion.tracking.model_server import ModelServer, ModelServerError


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _body(cells: list[str]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[c] for c in cells]}}).encode()


def adversarial_bodies(test_image: str) -> dict[str, bytes]:
    """The adversarial requests of the module docstring, encoded once."""
    ramp = np.linspace(0, 255, 7000, dtype=np.float32)
    big = Image.fromarray(np.stack([np.add.outer(ramp, ramp) / 2] * 3, -1).astype(np.uint8))
    big_cell = _png(big)
    deep = np.add.outer(np.linspace(0, 32767, 6000), np.linspace(0, 32767, 6000)).astype(np.uint16)
    return {
        "100 rows": _body([test_image] * 100),
        "8 x 49 MP": _body([big_cell] * 8),
        "4 x 49 MP": _body([big_cell] * 4),
        "16-bit 36 MP": _body([_png(Image.fromarray(deep))]),
    }


def post(port: int, body: bytes, timeout_s: float = 300) -> tuple[int, float]:
    """POST ``body`` to ``/invocations``; (HTTP status, seconds) — status 0 when the connection failed."""
    start = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - start
    except (OSError, http.client.HTTPException):
        return 0, time.monotonic() - start
    finally:
        connection.close()


class RssSampler(threading.Thread):
    """Samples the summed RSS of ``pid`` and its descendants every 20 ms; kills the tree past ``cap`` bytes."""

    def __init__(self, pid: int, cap: int) -> None:
        super().__init__(daemon=True)
        self.root, self.cap = psutil.Process(pid), cap
        self.peak, self.capped_after, self.stopped = 0, None, threading.Event()
        self.began = time.monotonic()

    def _tree(self) -> list[psutil.Process]:
        return [self.root, *self.root.children(recursive=True)]

    def rss(self) -> int:
        """The tree's RSS now (processes that end while it is read count 0)."""
        total = 0
        for proc in self._tree():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def run(self) -> None:
        while not self.stopped.is_set():
            total = self.rss()
            self.peak = max(self.peak, total)
            if total > self.cap and self.capped_after is None:
                self.capped_after = time.monotonic() - self.began
                for proc in self._tree():
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
            time.sleep(0.02)


def run_load(
    port: int, good: bytes, bad: dict[str, bytes], seconds: float, good_clients: int, bad_clients: int,
    sampler: RssSampler,
):  # fmt: skip
    """Run the clients for ``seconds`` or until ``sampler`` killed the server; returns (good (status, seconds)
    pairs, adversarial name -> statuses)."""
    until = time.monotonic() + seconds
    good_results: list[tuple[int, float]] = []
    bad_results: dict[str, Counter] = {name: Counter() for name in bad}
    lock = threading.Lock()

    def going() -> bool:
        return time.monotonic() < until and sampler.capped_after is None

    def good_client() -> None:
        while going():
            result = post(port, good)
            with lock:
                good_results.append(result)

    def bad_client(offset: int) -> None:
        names = list(bad)
        i = offset
        while going():
            name = names[i % len(names)]
            status, _ = post(port, bad[name])
            with lock:
                bad_results[name][status] += 1
            i += 1

    threads = [threading.Thread(target=good_client) for _ in range(good_clients)]
    threads += [threading.Thread(target=bad_client, args=(i,)) for i in range(bad_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return good_results, bad_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-uri", default="models:/image-emotion@champion")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared/main"), help="a prepare output")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--good-clients", type=int, default=3)
    parser.add_argument("--bad-clients", type=int, default=2)
    parser.add_argument("--rss-cap-gib", type=float, default=6.0, help="kill the server past this RSS")
    args = parser.parse_args()

    from image_emotion.data.torch_data import PreparedDataset

    test = PreparedDataset.load(args.prepared).split("test")
    if test.manifest.empty:
        sys.exit(f"error: {args.prepared} has no test images; run `dvc repro prepare` first")
    test_image = base64.b64encode((test.root / test.manifest["path"].iloc[0]).read_bytes()).decode("ascii")
    good, bad = _body([test_image]), adversarial_bodies(test_image)
    print("request bytes: " + ", ".join(f"{name} {len(body) / 2**20:.1f} MB" for name, body in bad.items()))

    log = Path(tempfile.mkdtemp()) / "server.log"
    try:
        server = ModelServer(args.model_uri, args.tracking_uri, log)
    except ModelServerError as exc:
        sys.exit(f"error: {exc}")
    try:
        status, _seconds = post(server.port, good)
        if status != 200:
            sys.exit(f"error: a good request got HTTP {status}; see {log}")
        sampler = RssSampler(server.proc.pid, int(args.rss_cap_gib * 2**30))
        idle = sampler.rss()
        sampler.start()
        good_results, bad_results = run_load(
            server.port, good, bad, args.seconds, args.good_clients, args.bad_clients, sampler
        )
        sampler.stopped.set()
        sampler.join()
    finally:
        server.stop()

    latencies = np.array([s for status, s in good_results if status == 200])
    answered = sum(status == 200 for status, _ in good_results)
    print(f"model: {args.model_uri}; {args.good_clients} good + {args.bad_clients} adversarial clients, "
          f"{args.seconds:g} s")  # fmt: skip
    print(f"server RSS: idle {idle / 2**20:,.0f} MiB, peak {sampler.peak / 2**20:,.0f} MiB"
          + (f" (KILLED at the {args.rss_cap_gib:g} GiB cap after {sampler.capped_after:.1f} s; the clients "
             "stopped there)" if sampler.capped_after is not None else ""))  # fmt: skip
    print(f"good requests: {answered} of {len(good_results)} answered 200", end="")
    if len(latencies):
        p50, p95 = np.percentile(latencies, [50, 95])
        print(f"; latency p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    else:
        print()
    for name, statuses in bad_results.items():
        shown = ", ".join(f"HTTP {s or 'failed'} x{n}" for s, n in sorted(statuses.items()))
        print(f"  {name}: {shown or 'not sent'}")


if __name__ == "__main__":
    main()
