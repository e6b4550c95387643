"""Inference cost of the multi-level classifier, measured in one run on the same images.

Prints two ratios with the default config (params.yaml ``detector``):
- full multi-level inference (detector + global + K regions + head) / the detector's own inference
  (goal <= 1.15x: classification reuses the detector's FPN features instead of a second backbone pass);
- full inference / one bare backbone+FPN forward (goal <= 2x on CPU),
and images/second on CPU, and on CUDA when there is a GPU.

    python benchmarks/inference.py [--images 16] [--repeats 3] [--batch 1] [--device cpu|cuda|all]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from results import emit
from torchvision.transforms.functional import to_tensor

from image_emotion.config import Config, load_config
from image_emotion.data.images import load_image
from image_emotion.data.synthetic import SyntheticConfig, generate
from image_emotion.models.multilevel import MultiLevelClassifier, MultiLevelHead, feature_dims
from image_emotion.models.region_detector import RegionDetector


def _images(n: int, size: int) -> list[torch.Tensor]:
    """``n`` synthetic-dataset images ``(3, size, size)`` in [0, 1] (drawn afresh, seeded)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "emb", SyntheticConfig.one_set(num_images=max(n, 16), image_size=size, seed=123))
        return [to_tensor(load_image(p)) for p in sorted((root / "images").iterdir())[:n]]


def _time_interleaved(
    fns: dict[str, Callable[[list[torch.Tensor]], object]], batches: list[list[torch.Tensor]], repeats: int, sync
) -> dict[str, float]:
    """Fastest of ``repeats`` passes over all ``batches`` for each function, in seconds.

    The functions take turns within every repeat (after one warm-up pass each), so a slow spell of the
    machine hits them alike; the minimum is the least disturbed estimate of each.
    """
    best = dict.fromkeys(fns, float("inf"))
    with torch.inference_mode():
        for fn in fns.values():
            for b in batches[:2]:
                fn(b)
        sync()
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                for b in batches:
                    fn(b)
                sync()
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def measure(device: str, images: list[torch.Tensor], batch: int, repeats: int, config: Config) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = config.detector
    detector = RegionDetector(cfg).eval().to(device)
    dg, dl = feature_dims(detector)
    head = MultiLevelHead(dg, dl, cfg.top_k, 8, mode="global+emotional")
    model = MultiLevelClassifier(detector, head).eval().to(device)
    batches = [[im.to(device) for im in images[i : i + batch]] for i in range(0, len(images), batch)]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def backbone_only(b):
        image_list, _ = detector.transform(b)
        return detector.backbone(image_list.tensors)

    t = _time_interleaved(
        {"backbone": backbone_only, "detector": detector.detect, "full": model}, batches, repeats, sync
    )
    t_backbone, t_detector, t_full = t["backbone"], t["detector"], t["full"]
    n = len(images)
    return {
        "backbone_s_per_image": t_backbone / n,
        "detector_s_per_image": t_detector / n,
        "full_s_per_image": t_full / n,
        "full_over_detector": t_full / t_detector,
        "full_over_backbone": t_full / t_backbone,
        "images_per_second": n / t_full,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument(
        "--image-size", type=int, default=160, help="synthetic image size (resized to detector.min_size)"
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    args = parser.parse_args()
    config = load_config(args.params) if Path(args.params).is_file() else Config()
    images = _images(args.images, args.image_size)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    cfg = config.detector
    print(
        f"config: {cfg.backbone}, {cfg.min_size}-{cfg.max_size} px, {cfg.rpn_pre_nms_top_n}/{cfg.rpn_post_nms_top_n} "
        f"proposals, K={cfg.top_k}; {args.images} images, batch {args.batch}, torch threads {torch.get_num_threads()}"
    )
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("cuda: no GPU here, skipped")
            continue
        r = measure(device, images, args.batch, args.repeats, config)
        name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        print(f"{device} ({name}):")
        print(f"  backbone+FPN      {1000 * r['backbone_s_per_image']:8.1f} ms/image")
        print(f"  detector          {1000 * r['detector_s_per_image']:8.1f} ms/image")
        print(
            f"  full multi-level  {1000 * r['full_s_per_image']:8.1f} ms/image  ({r['images_per_second']:.1f} images/s)"
        )
        print(f"  full / detector   {r['full_over_detector']:8.2f}x   (goal <= 1.15x)")
        print(f"  full / backbone   {r['full_over_backbone']:8.2f}x   (goal <= 2x on CPU)")
        figures = {
            "backbone+FPN ms/image": 1000 * r["backbone_s_per_image"],
            "full multi-level ms/image": 1000 * r["full_s_per_image"],
            "full / detector x": r["full_over_detector"],
            "full / backbone+FPN x": r["full_over_backbone"],
        }
        emit(f"inference, batch {args.batch}", device, figures)


if __name__ == "__main__":
    main()
