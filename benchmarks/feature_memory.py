"""Peak memory of training the classifier head on cached features, at 1×, 4× and 16× the embedded dataset,
streamed (``FeatureStore``: a mini-batch's rows read from the shard files when due, what the stages do) against
the whole cache held in memory (what they did before), measured in one run and printed with ratios.

The caches are the ``dvc repro`` cache of the main set (``data/features/main``) repeated S times, written with
the extraction's own ``write_shard``; each measurement runs in a fresh process (its peak resident set size,
``ru_maxrss``, is its own): load, train a head (L_multi, λ 0.4, the stage's batch size), predict every image.
(Children: ``peak_memory.run_child``.)

    python benchmarks/feature_memory.py [--scales 1 4 16] [--epochs 2] [--work /tmp/feature-memory] [--source DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import torch
from peak_memory import MODES, print_peaks, run_child

from image_emotion.config import load_config
from image_emotion.training.feature_cache import new_index, read_index, shard_ranges, write_shard
from image_emotion.training.feature_store import FeatureStore, load_cache
from image_emotion.training.heads import HeadData, predict, train_head

SOURCE = Path("data/features/main")
CLASSES = 8


def build(source_dir: Path, scale: int, work: Path) -> Path:
    """``source_dir``'s images repeated ``scale`` times, as a cache of the same shard size."""
    out = work / f"x{scale}"
    source = FeatureStore(source_dir)
    shard_size = read_index(source_dir)["shard_size"]
    n = len(source) * scale
    if (read_index(out) or {}).get("num_images") == n:
        return out
    shutil.rmtree(out, ignore_errors=True)
    index = new_index(f"x{scale}", n, shard_size)
    for sid, start, stop in shard_ranges(n, shard_size):
        rows = torch.arange(start, stop) % len(source)
        part = source.rows(rows)
        write_shard(out, index, sid, start, stop, {**part, "paths": [f"{i}.jpg" for i in range(start, stop)]})
    return out


def measure(cache: Path, mode: str, epochs: int) -> dict:
    """In this process: load ``cache`` (``streamed`` or ``memory``), train one head, predict every image."""
    config = load_config(Path("params.yaml"))
    hp = config.classifier.model_copy(update={"epochs": epochs})
    start = time.perf_counter()
    if mode == "streamed":
        store = FeatureStore(cache)
        features, n = store.all(), len(store)
    else:
        loaded = load_cache(cache)
        features = {k: loaded[k] for k in ("global", "emotional", "object")}
        n = len(loaded["paths"])
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    dist = torch.softmax(torch.randn(n, CLASSES, generator=g), 1)
    data = HeadData(features, labels, dist, dist.gather(1, labels[:, None])[:, 0])
    sample = data.select(torch.arange(min(n, 4)))
    shapes = {k: tuple(v.shape[1:]) for k, v in sample.tensors().items()}
    dims = (shapes["global"][0], shapes["emotional"][1], shapes["emotional"][0])
    head = train_head(data, dims, CLASSES, hp.mode, "multi", 0.4, hp, hp.hidden)
    predict(head, data)
    seconds = time.perf_counter() - start
    return {"images": n, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/feature-memory"))
    parser.add_argument("--source", type=Path, default=SOURCE, help="the cache to repeat")
    parser.add_argument("--child", nargs=2, metavar=("CACHE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child[0]), args.child[1], args.epochs)))
        return
    if not (args.source / "index.json").exists():
        raise SystemExit(f"{args.source}: no cached features; run `dvc repro extract_main` first")
    results: dict[tuple[str, int], dict] = {}
    for scale in args.scales:
        cache = build(args.source, scale, args.work)
        for mode in MODES:
            results[mode, scale] = run_child([__file__, "--epochs", str(args.epochs), "--child", str(cache), mode])
    size_mb = {s: sum(f.stat().st_size for f in (args.work / f"x{s}").iterdir()) / 2**20 for s in args.scales}
    print_peaks(results, args.scales, {s: f"{size_mb[s]:>7.1f} MB cache " for s in args.scales})


if __name__ == "__main__":
    main()
