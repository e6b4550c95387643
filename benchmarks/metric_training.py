"""Cost of training seed 002's sentiment-vector network with a frozen backbone, measured in one run on the same
images: the backbone run in every step (``cache_trunk=False``) against its maps computed once and shared
(``TrunkCache``, what ``train_metric`` does for Table 1's rows), and the cost of one full fine-tuning epoch
(``metric.freeze_backbone=false``, the paper's setting) for scale. Prints seconds per epoch and the ratios, on
CPU, and on CUDA when there is a GPU.

Table 1 itself is the stage's output: ``image-emotion train-metric --set "metric.ablation_seeds=[0, 1, 2]"``.

    python benchmarks/metric_training.py [--images 256] [--size 96] [--epochs 2] [--device cpu|cuda|all]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from results import emit

from image_emotion.config import Config, SyntheticConfig
from image_emotion.data.datasets import load_dataset
from image_emotion.data.synthetic import generate
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.models.metric import SentimentVectorNet
from image_emotion.training.metric import MetricObjective, TrunkCache, image_tensor, train_metric_net


def _data(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    root = generate(Path(tempfile.mkdtemp()) / "syn", SyntheticConfig.one_set(num_images=n, image_size=160))
    manifest = load_dataset("synthetic", root).manifest
    data = PreparedDataset(manifest=manifest, root=root, name="synthetic", label_set="mikels8")
    net = SentimentVectorNet("efficientnet_lite0", weights=None)
    return image_tensor(data, size, net.image_mean, net.image_std), data.labels()


def _epoch_seconds(images, labels, device: str, epochs: int, mode: str) -> float:
    """Seconds per epoch of ``mode``: ``cached`` (maps once, included), ``per-step`` or ``fine-tune``."""
    cfg = Config().metric
    torch.manual_seed(0)
    net = SentimentVectorNet(cfg.backbone, cfg.backbone_weights, 8, cfg.embedding_dim).to(device)
    start = time.perf_counter()
    trunk = TrunkCache(net, images) if mode == "cached" else None
    train_metric_net(
        net, images, labels, "mikels8", MetricObjective.from_config(cfg), epochs=epochs, batch_size=cfg.batch_size,
        min_per_class=cfg.min_per_class, freeze_backbone=mode != "fine-tune", trunk=trunk,
        cache_trunk=mode == "cached",
    )  # fmt: skip
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    args = parser.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    images, labels = _data(args.images, args.size)
    print(f"{args.images} images at {args.size} px, {args.epochs} epochs, batch {Config().metric.batch_size}")
    for device in devices:
        t = {m: _epoch_seconds(images, labels, device, args.epochs, m) for m in ("cached", "per-step", "fine-tune")}
        print(
            f"{device}: s/epoch cached maps {t['cached']:.2f} (map computation included), backbone every step "
            f"{t['per-step']:.2f}, full fine-tune {t['fine-tune']:.2f}; per-step / cached = "
            f"{t['per-step'] / t['cached']:.1f}x, fine-tune / cached = {t['fine-tune'] / t['cached']:.1f}x"
        )
        figures = {f"{mode} s/epoch": t[key] for mode, key in (("cached maps", "cached"), ("fine-tune", "fine-tune"))}
        emit("metric learning", device, {**figures, "backbone every step / cached x": t["per-step"] / t["cached"]})


if __name__ == "__main__":
    main()
