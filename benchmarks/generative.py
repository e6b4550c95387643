"""Cost of seed 001's generative model (the default: frozen ImageNet Lite0 -> mapping -> small BART), measured in
one run on the same synthetic images and printed as ratios:

- training: one step on cached encoder features with the template NLL alone (λ = 0) against the default
  objective (λ = 0.5: every label's template scored for the distribution loss), and against running the
  frozen encoder in every step (what caching the features once saves);
- answering: scoring every label's template (the prediction and its distribution) against writing the text
  with constrained beam search, per image, for Mikels-8;
- the encoder alone, per image (what ``describe`` pays before either).

    python benchmarks/generative.py [--images 64] [--steps 10] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from results import emit

from image_emotion.config import Config, SyntheticConfig
from image_emotion.data.datasets import load_dataset
from image_emotion.data.synthetic import generate
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.training.generative import Examples, batch_loss, encode_dataset, generated_labels, new_model


def _seconds(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    cfg = Config().generative
    root = generate(Path(tempfile.mkdtemp()) / "syn", SyntheticConfig.one_set(num_images=args.images))
    data = PreparedDataset(load_dataset("synthetic", root).manifest, root, "synthetic", "mikels8")
    model = new_model(cfg, seed=0).to(args.device)

    start = time.perf_counter()
    features = encode_dataset(model, data)
    encode_ms = 1000 * (time.perf_counter() - start) / len(features)

    n = min(cfg.batch_size, len(features))
    labels = data.labels()[:n]
    batch = Examples(
        features[:n], ["mikels8"] * n, labels, [torch.full((8,), 1 / 8)] * n, np.array(["train"] * n),
        [("main", i) for i in range(n)],
    )  # fmt: skip
    optimizer = torch.optim.AdamW([p for k, p in model.named_parameters() if not k.startswith("encoder.")], lr=1e-4)
    images = torch.randn(n, 3, model.image_size, model.image_size, device=args.device)

    def step(weight: float, with_encoder: bool = False) -> None:
        model.train()
        if with_encoder:
            with torch.no_grad():
                batch.features = model.encode_images(images).cpu()
        loss = batch_loss(model, batch, weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    nll = _seconds(lambda: step(0.0), args.steps, args.device)
    joint = _seconds(lambda: step(cfg.distribution_weight), args.steps, args.device)
    with_encoder = _seconds(lambda: step(cfg.distribution_weight, True), args.steps, args.device)
    model.eval()
    test = features[:n].to(args.device)
    with torch.no_grad():
        score = _seconds(lambda: model.label_log_likelihoods(test, "mikels8"), args.steps, args.device) / n
    write = _seconds(
        lambda: generated_labels(model, test, "mikels8", constrained=True, num_beams=cfg.num_beams), 2, args.device
    ) / n  # fmt: skip
    print(f"device {args.device}, batch {n}, {args.images} images of 160 px, generative defaults")
    print(f"encoder (Lite0, frozen): {encode_ms:.1f} ms/image")
    print(f"training step, template NLL only (λ = 0): {1000 * nll:.0f} ms")
    print(f"training step, default objective (λ = {cfg.distribution_weight}): {1000 * joint:.0f} ms "
          f"({joint / nll:.2f}× the NLL alone)")  # fmt: skip
    print(f"training step with the encoder run every step: {1000 * with_encoder:.0f} ms "
          f"({with_encoder / joint:.2f}× the cached features)")  # fmt: skip
    print(f"answer by scoring every label (Mikels-8): {1000 * score:.2f} ms/image")
    print(f"answer by constrained beam search ({cfg.num_beams} beams): {1000 * write:.2f} ms/image "
          f"({write / score:.2f}× scoring)")  # fmt: skip
    figures = {"encoder ms/image": encode_ms, "training step ms": 1000 * joint, "scoring ms/image": 1000 * score}
    emit("generative", args.device, {**figures, "beam search ms/image": 1000 * write})


if __name__ == "__main__":
    main()
