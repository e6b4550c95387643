"""Seed 002's Table 1 ablation on the prepared main set (the synthetic default after `dvc repro`), measured in one run.

Each row trains a fresh sentiment-vector network (EfficientNet-Lite0 ImageNet weights, backbone frozen: the CPU
setting; the paper fine-tunes GoogLeNet) on the train split with one objective and retrieves the test images
among the train images (the paper's FI protocol) with the feature that row learns:

- softmax (ω = 0), retrieval on the FC embedding;
- triplet, semi-hard (ω = 1), on the FC embedding; accuracy = the label of the nearest train image;
- softmax + triplet (ω = 0.7), on the FC embedding;
- sentiment constraint on FC features (ω = 0.7);
- sentiment constraint on the sentiment vector (ω = 0.7): the paper's method.

Prints accuracy, NN, mAP8, mAP2 and ANMRR per row, the paper's FI figures beside the first and last.

    python benchmarks/metric_ablation.py [--prepared data/prepared/main] [--size 96] [--epochs 8] [--seeds 0]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from image_emotion.data.torch_data import PreparedDataset
from image_emotion.metrics import rank_gallery, retrieval_report
from image_emotion.models.metric import SentimentVectorNet, normalization
from image_emotion.training.heads import split_index
from image_emotion.training.metric import MetricObjective, embed, image_tensor, train_metric_net

ROWS = {  # name -> (objective, the feature retrieval uses)
    "softmax": (MetricObjective(omega=0.0), "embedding"),
    "triplet (semi-hard)": (MetricObjective(omega=1.0, loss="triplet", feature="embedding"), "embedding"),
    "softmax + triplet": (MetricObjective(omega=0.7, loss="triplet", feature="embedding"), "embedding"),
    "sentiment constraint, FC": (MetricObjective(omega=0.7, loss="sentiment", feature="embedding"), "embedding"),
    "sentiment constraint, SV": (MetricObjective(omega=0.7, loss="sentiment", feature="sentiment"), "sentiment"),
}
PAPER_FI = {"softmax": (65.18, 0.3583, 0.6773), "sentiment constraint, SV": (67.64, 0.4885, 0.8098)}  # acc, mAP8, mAP2


def one_row(objective, feature, images, labels, idx, label_set, args, seed) -> dict[str, float]:
    torch.manual_seed(seed)
    net = SentimentVectorNet("efficientnet_lite0", weights="imagenet", num_classes=8, embedding_dim=128)
    train_metric_net(
        net, images[idx["train"]], labels[idx["train"]], label_set, objective, epochs=args.epochs,
        batch_size=args.batch_size, min_per_class=args.min_per_class, lr_conv=args.lr, lr_last=args.lr,
        freeze_backbone=True, seed=seed,
    )  # fmt: skip
    out = embed(net, images)
    gallery, queries = out[feature][idx["train"]], out[feature][idx["test"]]
    y = labels.numpy()
    report = retrieval_report(queries, y[idx["test"]], gallery, y[idx["train"]], label_set)
    if objective.omega < 1.0:
        predicted = out["logits"][idx["test"]].argmax(1)
    else:  # no classifier was trained: the label of the nearest train image
        predicted = y[idx["train"]][rank_gallery(queries, gallery)[:, 0]]
    return {"accuracy": float((predicted == y[idx["test"]]).mean()), **report}


def _formatter(runs: list[dict[str, float]]):
    """``fmt(key, scale, digits)``: the mean over the seeds' runs, ``±`` their std when there are several."""

    def fmt(key: str, scale: float = 1.0, digits: int = 3) -> str:
        values = [scale * r[key] for r in runs]
        sd = f"±{statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
        return f"{np.mean(values):.{digits}f}{sd}"

    return fmt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared/main"))
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--min-per-class", type=int, default=4)
    parser.add_argument(
        "--lr", type=float, default=0.01, help="both groups: the new 1×1 and FC layers start from scratch"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    data = PreparedDataset.load(args.prepared)
    mean, std = normalization("efficientnet_lite0")
    start = time.perf_counter()
    images = image_tensor(data, args.size, list(mean), list(std))
    labels = data.labels()
    idx = {s: split_index(data, s) for s in ("train", "test")}
    loaded = time.perf_counter() - start
    print(
        f"{data.name}: {len(idx['train'])} train, {len(idx['test'])} test images at {args.size} px ({loaded:.0f} s "
        f"to load); {args.epochs} epochs, frozen backbone, seeds {args.seeds}"
    )
    print(
        f"{'row':28s} {'accuracy':>9s} {'NN':>6s} {'mAP8':>7s} {'mAP2':>7s} {'ANMRR':>7s}   paper FI (acc, mAP8, mAP2)"
    )
    for name, (objective, feature) in ROWS.items():
        t = time.perf_counter()
        runs = [one_row(objective, feature, images, labels, idx, data.label_set, args, s) for s in args.seeds]

        fmt = _formatter(runs)
        paper = PAPER_FI.get(name)
        print(
            f"{name:28s} {fmt('accuracy', 100, 1):>9s} {fmt('nn'):>6s} {fmt('map8'):>7s} {fmt('map2'):>7s} "
            f"{fmt('anmrr'):>7s}   {paper if paper else ''}  ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
