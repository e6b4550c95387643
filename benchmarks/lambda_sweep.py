"""Cost of seed 000's λ sweep on the cached features of a ``dvc repro`` (data/prepared/main, data/features/main,
models/detector/detector.pt), measured in one run and printed as ratios:

- one fit of the head (L_multi at λ = 0.4, the stage's settings: 100 epochs, batch 128);
- the sweep's λ heads fitted one after another (what the stage did) against all of them in one vectorized pass
  (``train_lambda_heads``: stacked weights under ``torch.func.vmap``), each against one fit;
- region extraction of the same images (the detector pass the features come from), per image from a sample and
  scaled to the dataset, against the vectorized sweep.

    python benchmarks/lambda_sweep.py [--epochs 100] [--sample 48] [--device cpu|cuda] [--scale 1]

``--scale S`` repeats the training rows S times (S× the data, same epochs), to see whether the head's cost is
launch-bound (flat in S: the GPU) or FLOP-bound (linear in S: the CPU).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from results import emit

from image_emotion.config import load_config
from image_emotion.data.torch_data import PreparedDataset, load_tensor_image
from image_emotion.device import pick_device
from image_emotion.models.multilevel import extract_features
from image_emotion.models.region_detector import load_detector
from image_emotion.training.heads import load_head_data, split_index, train_head, train_lambda_heads


def _timed(fn, device: torch.device) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="default: params.yaml's classifier.epochs")
    parser.add_argument("--sample", type=int, default=48, help="images whose extraction is timed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--scale", type=int, default=1, help="repeat the training rows this many times")
    args = parser.parse_args()
    config = load_config(Path("params.yaml"))
    device = pick_device(args.device)
    hp = config.classifier if args.epochs is None else config.classifier.model_copy(update={"epochs": args.epochs})
    prepared, features = Path("data/prepared/main"), Path("data/features/main")
    if not (features / "index.json").exists() and not any(features.glob("*")):
        raise SystemExit(f"{features}: no cached features; run `dvc repro extract_main` first")
    data, head_data, dims = load_head_data(prepared, features, config.emotions)
    train_rows = split_index(data, "train")
    train = head_data.select(list(train_rows) * args.scale).on(device)  # in the device's memory: no reading timed
    classes, mode, lams = head_data.distributions.shape[1], hp.mode, list(hp.lambdas)
    print(f"{len(train)} training images, dims {dims}, {len(lams)} λ, {hp.epochs} epochs, device {device}")

    warm = hp.model_copy(update={"epochs": 1})
    train_lambda_heads(train, dims, classes, mode, lams[:2], warm, hp.hidden, device)
    one, _ = _timed(lambda: train_head(train, dims, classes, mode, "multi", 0.4, hp, hp.hidden, device), device)
    apart, _ = _timed(
        lambda: [train_head(train, dims, classes, mode, "multi", lam, hp, hp.hidden, device) for lam in lams], device
    )
    together, _ = _timed(lambda: train_lambda_heads(train, dims, classes, mode, lams, hp, hp.hidden, device), device)

    detector = load_detector(Path("models/detector/detector.pt"), device)
    objects = load_detector(Path("models/objects/detector.pt"), device)  # the object regions' own detector
    dataset = PreparedDataset.load(prepared)
    paths = list(dataset.manifest["path"])[: args.sample]
    images = [load_tensor_image(dataset.root / p).to(device) for p in paths]
    with torch.inference_mode():
        extract_features(detector, images[:2], objects=objects)  # warm-up
        per_image, _ = _timed(
            lambda: [
                extract_features(detector, images[i : i + 16], objects=objects) for i in range(0, len(images), 16)
            ],
            device,
        )
    extraction = per_image / len(images) * len(dataset.manifest)

    print(f"one fit                      {one:8.2f} s")
    print(f"{len(lams)} fits one after another  {apart:8.2f} s   {apart / one:5.2f}x one fit")
    print(f"{len(lams)} heads vectorized        {together:8.2f} s   {together / one:5.2f}x one fit")
    print(f"vectorized vs one by one              {apart / together:5.2f}x faster")
    print(
        f"extraction of {len(dataset.manifest)} images     {extraction:8.2f} s   "
        f"({1000 * per_image / len(images):.1f} ms/image from {len(images)}); sweep / extraction "
        f"{together / extraction:.3f}"
    )
    figures = {"one head fit s": one, f"{len(lams)} λ heads vectorized s": together}
    figures |= {"vectorized / one fit x": together / one, "sweep / extraction x": together / extraction}
    emit("λ sweep", device.type, figures)


if __name__ == "__main__":
    main()
