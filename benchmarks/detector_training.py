"""Detector training and region extraction on this machine's device (CUDA when there is one), measured in one run.

Prints: training images/s of the emotional-region fine-tuning loop (``training/detection.py``), extraction ms/image
(detector + global + top-K region features, one backbone pass), and the resume check on this device - two epochs
in one go against one epoch, a checkpoint, then a resumed second epoch (max |Δweight|; 0 on the CPU, where the
kernels are deterministic).

    python benchmarks/detector_training.py [--device auto|cpu|cuda] [--size 160] [--images 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from results import emit

from image_emotion.config import DetectorConfig, FinetuneConfig, SyntheticConfig
from image_emotion.data.synthetic import generate, read_objects
from image_emotion.data.torch_data import DetectionDataset, load_tensor_image
from image_emotion.device import pick_device
from image_emotion.models.multilevel import extract_features
from image_emotion.models.region_detector import RegionDetector
from image_emotion.training.detection import train_detector


class _NoTracking:
    """Stands in for the ``mlflow`` module: the benchmark logs nothing."""

    def log_metrics(self, *_args, **_kwargs) -> None:
        pass


def _dataset(root: Path, n: int, size: int) -> DetectionDataset:
    generate(root, SyntheticConfig.one_set(num_images=max(n, 16), image_size=size, seed=7))
    rows = read_objects(root)[:n]
    boxes = [[o[:4] for o in objs if o[4] > 0][-2:] for _, objs in rows]  # the motifs (drawn last)
    return DetectionDataset([root / p for p, _ in rows], boxes, None, hflip=True, seed=0)


def _train(config: DetectorConfig, hp: FinetuneConfig, data: DetectionDataset, ckpt: Path, device) -> RegionDetector:
    torch.manual_seed(0)
    detector = RegionDetector(config).to(device)
    data.generator.manual_seed(0)
    train_detector(detector, data, hp, detector, ckpt, "bench", device, _NoTracking(), "finetune")
    return detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=160, help="image and detector input size (px)")
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    device = pick_device(args.device)
    config = DetectorConfig(backbone_weights=None, min_size=args.size, max_size=args.size)
    hp = FinetuneConfig(epochs=1, batch_size=8, warmup_steps=4)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = _dataset(tmp / "set", args.images, args.size)

        start = time.perf_counter()
        one = _train(config, hp, data, tmp / "a.pt", device)  # epoch 1, checkpointed
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - start
        resumed = _train(config, hp.model_copy(update={"epochs": 2}), data, tmp / "a.pt", device)  # resumes at 1
        straight = _train(config, hp.model_copy(update={"epochs": 2}), data, tmp / "b.pt", device)
        diff = max(
            (a - b).abs().max().item()
            for a, b in zip(resumed.state_dict().values(), straight.state_dict().values(), strict=True)
            if a.is_floating_point()
        )

        images = [load_tensor_image(p).to(device) for p in data.paths[:32]]
        one.eval()
        with torch.inference_mode():
            # the stage's pass: emotional regions from the fine-tuned detector, object regions from the object
            # detector (here the same network: the cost of its second pass is what counts)
            extract_features(one, images[:8], objects=one)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for i in range(0, len(images), 8):
                extract_features(one, images[i : i + 8], objects=one)
            if device.type == "cuda":
                torch.cuda.synchronize()
            extract_ms = (time.perf_counter() - start) / len(images) * 1000
    result = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "size_px": args.size,
        "train_images_per_s": round(len(data) / train_s, 2),
        "extract_ms_per_image": round(extract_ms, 2),
        "resumed_vs_uninterrupted_max_abs_weight_diff": diff,
    }
    print(json.dumps(result))
    emit(
        "detector training",
        device.type,
        {"training images/s": result["train_images_per_s"], "extraction ms/image": result["extract_ms_per_image"]},
    )


if __name__ == "__main__":
    main()
