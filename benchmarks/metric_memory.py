"""Peak memory of seed 002's training with a frozen backbone (the default) at 1×, 4× and 16× a base set:
streamed (``ImageRows`` decodes a batch's images when due, ``StreamedTrunk`` keeps the backbone's maps on disk:
what ``train_metric`` does) against images and maps held in memory (``image_tensor`` + ``TrunkCache``: what it
did before), measured in one run, each in a fresh process (``ru_maxrss``), with ratios.

The base set is the first ``--base`` images of the embedded main set (``data/synthetic/main``, made by
``dvc repro make_synthetic``), repeated; the network is params.yaml's (``metric`` section) with untrained layers.

    python benchmarks/metric_memory.py [--scales 1 4 16] [--base 100] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peak_memory import MODES, print_peaks, run_child

from image_emotion.config import load_config
from image_emotion.data.datasets import load_dataset
from image_emotion.data.emotions import get_label_set
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.models.metric import SentimentVectorNet
from image_emotion.training.metric import MetricObjective, TrunkCache, embed, image_tensor, train_metric_net
from image_emotion.training.metric_inputs import ImageRows, StreamedTrunk

ROOT = Path("data/synthetic/main")


def measure(scale: int, base: int, mode: str, epochs: int) -> dict:
    """In this process: the base set repeated ``scale`` times, one training and one embedding of every image."""
    cfg = load_config(Path("params.yaml")).metric
    manifest = load_dataset("synthetic", ROOT).manifest.iloc[:base].reset_index(drop=True)
    data = PreparedDataset(manifest=manifest, root=ROOT, name="synthetic", label_set="mikels8")
    rows = np.tile(np.arange(base), scale)
    labels_of = get_label_set("mikels8").labels
    labels = torch.tensor([labels_of.index(x) for x in manifest["label"]])[rows]
    torch.manual_seed(cfg.seed)
    net = SentimentVectorNet(cfg.backbone, cfg.backbone_weights, 8, cfg.embedding_dim, cfg.filters)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trunk-") as scratch:
        if mode == "streamed":
            images = ImageRows(data, cfg.image_size, net.image_mean, net.image_std, rows)
            trunk = StreamedTrunk(net, images, Path(scratch) / "trunk")
        else:
            images = image_tensor(data, cfg.image_size, net.image_mean, net.image_std)[torch.as_tensor(rows)]
            trunk = TrunkCache(net, images)
        train_metric_net(
            net, images, labels, "mikels8", MetricObjective.from_config(cfg), epochs=epochs,
            batch_size=cfg.batch_size, min_per_class=cfg.min_per_class, freeze_backbone=True, trunk=trunk,
        )  # fmt: skip
        embed(net, images, trunk=trunk)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images": len(rows), "peak_rss_mb": peak, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--base", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("SCALE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(int(args.child[0]), args.base, args.child[1], args.epochs)))
        return
    if not (ROOT / "annotations.csv").exists():
        raise SystemExit(f"{ROOT}: no embedded main set; run `dvc repro make_synthetic` first")
    results = {}
    for scale in args.scales:
        for mode in MODES:
            cmd = [__file__, "--base", str(args.base), "--epochs", str(args.epochs), "--child", str(scale), mode]
            results[mode, scale] = run_child(cmd)
    print_peaks(results, args.scales)


if __name__ == "__main__":
    main()
