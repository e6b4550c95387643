"""Stage ``extract_regions``: one detector pass over every image -> cached global + top-K region features.

The emotional regions, the global feature and every region's feature come from the fine-tuned detector's one
backbone pass; Table 1's object regions are found by the object-pretrained detector (``models/objects``, the
paper's COCO detector: its own backbone, RPN, object classifier and box regression, never fine-tuned on
emotional boxes), a second pass that only this stage pays (served models read emotional regions alone).

For each prepared dataset (the main one and the transfer target), features of all its images (every split)
go to a shard cache (``training/feature_cache.py``): streaming, memory flat in dataset size, a progress bar,
and a re-run skips every shard already cached for the same detector and manifest. Corrupt shards are
recomputed.

``run(..., shard=(i, N))`` (``extract-regions --shard i/N``) computes only shard ``i``'s share of every cache (its
ranges dealt round-robin, ``feature_cache.shard_ranges_of``), so N machines can split the work; ``merge-features``
then joins the N partial caches into the one an unsharded run writes, byte for byte.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from image_emotion.config import Config
from image_emotion.data.torch_data import PreparedDataset
from image_emotion.device import pick_device
from image_emotion.errors import ConfigError
from image_emotion.files import file_sha256, fingerprint, write_json_atomic
from image_emotion.models.multilevel import extract_features
from image_emotion.models.region_detector import load_detector
from image_emotion.stages.paths import ExtractPaths
from image_emotion.tracking import runs as tracking
from image_emotion.training.feature_cache import check_shard, missing_shards, read_index, write_shard


def extract_dataset(
    detector,
    objects,
    data: PreparedDataset,
    cache_dir: Path,
    identity: str,
    shard_size: int,
    batch_size: int,
    device: torch.device,
    shard: int = 0,
    shards: int = 1,
) -> dict[str, int]:
    """Fill ``cache_dir`` for ``data`` (only shard ``shard`` of ``shards``'s ranges when ``shards > 1``) with
    ``detector``'s features and ``objects``' object regions; returns how many of its images it holds and how many
    shards were computed and reused."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = list(data.manifest["path"])
    index, todo = missing_shards(cache_dir, identity, len(paths), shard_size, shard, shards)
    if not todo and read_index(cache_dir) != index:  # foreign ranges dropped, or a part with no range at all
        write_json_atomic(cache_dir / "index.json", index)
    total = len(index["shards"]) + len(todo)
    with (
        torch.inference_mode(),
        tqdm(total=sum(b - a for _, a, b in todo), desc=f"regions {data.name}", disable=None) as bar,
    ):
        for sid, start, stop in todo:
            chunks = []
            for i in range(start, stop, batch_size):
                batch = [data.tensor_image(p).to(device) for p in paths[i : min(i + batch_size, stop)]]
                found = extract_features(detector, batch, objects=objects).as_dict()
                chunks.append({k: v.cpu() for k, v in found.items()})
                bar.update(len(batch))
            features = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
            features["paths"] = paths[start:stop]
            write_shard(cache_dir, index, sid, start, stop, features)
    images = sum(entry["stop"] - entry["start"] for entry in index["shards"].values())
    return {"images": images, "shards_computed": len(todo), "shards_reused": total - len(todo)}


def run(config: Config, paths: ExtractPaths, shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """Extract every prepared dataset's cache; ``shard=(i, N)``: only shard ``i`` of ``N`` of each."""
    if len(paths.prepared) != len(paths.features):
        raise ConfigError("extract-regions needs one --features directory per --prepared directory")
    part, parts = shard
    check_shard(part, parts)
    device = pick_device(config.device)
    shard_size, batch_size = config.extract.shard_size, config.extract.batch_size
    detector, objects = load_detector(paths.detector, device), load_detector(paths.objects, device)
    detectors_sha = fingerprint(file_sha256(paths.detector), file_sha256(paths.objects))
    results: dict[str, Any] = {}
    start = time.perf_counter()
    with tracking.stage_run(config, "extract_regions", paths.reads) as mlflow:
        for prepared, cache_dir in zip(paths.prepared, paths.features, strict=True):
            data = PreparedDataset.load(prepared)
            identity = fingerprint(detectors_sha, file_sha256(Path(prepared) / "manifest.csv"), shard_size)
            results[Path(cache_dir).name] = extract_dataset(
                detector, objects, data, Path(cache_dir), identity, shard_size, batch_size, device, part, parts
            )
        results_flat = {f"{name}.{k}": v for name, r in results.items() for k, v in r.items()}
        mlflow.log_metrics({k: float(v) for k, v in results_flat.items()})
    metrics = {"datasets": results, "seconds": round(time.perf_counter() - start, 2), "device": str(device)}
    if parts > 1:  # a partial cache: merge-features joins the parts
        metrics["shard"] = {"index": part, "of": parts}
    write_json_atomic(paths.metrics, metrics)
    return metrics
