"""How much the paper's effects on the synthetic default depend on the generator's seed, measured in one run.

For each seed, the main set (FI's role) is drawn afresh with that seed, prepared, its regions extracted with
one detector (default: the workspace's ``models/detector``, trained by ``dvc repro``), and
``train_classifier`` runs as the pipeline runs it (λ sweep, λ* chosen on validation, loss variants,
ablations). Prints one row a seed and mean ± std of: test accuracy with L_cls and with L_multi at λ*, their
difference, λ*, global-only vs global+emotional (Table 1) - the shapes seed 000 reports. Nothing is tuned on
the test split: λ* comes from validation only.

    python benchmarks/seed_spread.py [--seeds 0 1 2] [--params params.yaml] [--detector models/detector/detector.pt]
        [--set key=value ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from image_emotion.config import load_config
from image_emotion.data.synthetic import generate
from image_emotion.stages import extract_regions, prepare, train_classifier
from image_emotion.stages.paths import ClassifierPaths, ExtractPaths, PreparePaths


def one_seed(config, seed: int, detector: Path, work: Path) -> dict:
    """Draw the main set with ``seed`` and train the classifier on it; the shapes of Tables 1-2."""
    main = config.synthetic.sets["main"].model_copy(update={"seed": seed})
    synthetic = config.synthetic.model_copy(update={"sets": {"main": main}})
    root = generate(work / f"synthetic_{seed}", synthetic, "main")
    cfg = config.model_copy(update={"data": config.data.model_copy(update={"dataset": "synthetic", "root": str(root)})})
    prepared, features = work / f"prepared_{seed}", work / f"features_{seed}"
    prepare.run(cfg, PreparePaths(out_dir=prepared, metrics=work / f"prepare_{seed}.json"))
    extract_regions.run(
        cfg, ExtractPaths(detector=detector, prepared=(prepared,), features=(features,), metrics=work / "x.json")
    )
    out = ClassifierPaths(
        prepared=prepared,
        features=features,
        out_dir=work / f"classifier_{seed}",
        sweep=work / f"sweep_{seed}.json",
        ablation=work / f"ablation_{seed}.json",
        metrics=work / f"classifier_{seed}.json",
    )
    metrics = train_classifier.run(cfg, out)
    table1 = {r["mode"]: r["test_accuracy"] for r in json.loads(out.ablation.read_text())}
    sweep = json.loads(out.sweep.read_text())
    return {
        "seed": seed,
        "cls": metrics["loss_variants_test_accuracy"]["cls"],
        "multi": metrics["loss_variants_test_accuracy"]["multi"],
        "p": metrics["loss_variants_test_accuracy"]["p"],
        "lambda_star": metrics["best_lambda"],
        "global": table1["global"],
        "global+emotional": table1["global+emotional"],
        "val_curve": [round(r["val_accuracy"], 4) for r in sweep],
        "test_curve": [round(r["test_accuracy"], 4) for r in sweep],
    }


def summarise(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """mean and (sample) std of every figure over the seeds."""
    keys = ("cls", "multi", "p", "lambda_star", "global", "global+emotional")
    out = {}
    for key in (*keys, "multi-cls", "emotional-global"):
        if key == "multi-cls":
            values = [r["multi"] - r["cls"] for r in rows]
        elif key == "emotional-global":
            values = [r["global+emotional"] - r["global"] for r in rows]
        else:
            values = [r[key] for r in rows]
        out[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--detector", type=Path, default=Path("models/detector/detector.pt"))
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and summary here")
    args = parser.parse_args()
    if not args.detector.is_file():
        raise SystemExit(f"{args.detector}: not found; run `dvc repro finetune_detector` first (or pass --detector)")
    config = load_config(args.params, args.overrides)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        for seed in args.seeds:
            start = time.perf_counter()
            rows.append(one_seed(config, seed, args.detector.resolve(), work))
            r = rows[-1]
            print(
                f"seed {seed}: L_cls {r['cls']:.3f}  L_multi {r['multi']:.3f}  L_p {r['p']:.3f}  λ* {r['lambda_star']}"
                f"  global {r['global']:.3f}  global+emotional {r['global+emotional']:.3f}"
                f"  ({time.perf_counter() - start:.0f} s)\n  val  by λ: {r['val_curve']}"
                f"\n  test by λ: {r['test_curve']}",
                flush=True,
            )
    summary = summarise(rows)
    print(f"\nover {len(rows)} generator seeds {args.seeds} (mean ± std):")
    for key, (mean, std) in summary.items():
        print(f"  {key:18s} {mean:.3f} ± {std:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
