"""``image-emotion``: one sub-command a pipeline stage. Errors print one line and exit with status 2.

Every stage sub-command takes ``--params`` / ``--set key=value`` and one option per path of the stage's
``*Paths`` dataclass (``--out-dir``, ``--metrics``, ...), defaulting to the paths ``dvc.yaml`` uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from image_emotion.config import DEFAULT_PARAMS, load_config
from image_emotion.errors import ImageEmotionError
from image_emotion.stages import paths as stage_paths

# sub-command -> (stage module, its paths dataclass, help)
STAGES = {
    "make-synthetic": (
        "make_synthetic",
        "MakeSyntheticPaths",
        "draw the synthetic default dataset (params: synthetic)",
    ),
    "prepare": ("prepare", "PreparePaths", "dataset layout -> validated manifest, splits, folds (params: data)"),
    "pretrain-objects": ("pretrain_objects", "PretrainPaths", "the object-pretrained detector (COCO or synthetic)"),
    "finetune-detector": ("finetune_detector", "FinetunePaths", "train the emotional-region branch (resumes)"),
    "extract-regions": ("extract_regions", "ExtractPaths", "cache global + top-K region features of every image"),
    "train-classifier": ("train_classifier", "ClassifierPaths", "λ sweep, loss variants, ablations, 8/2 classes"),
    "transfer-cv": ("transfer_cv", "TransferPaths", "5-fold one-against-all transfer to one small dataset"),
    "evaluate": (
        "evaluate",
        "EvaluatePaths",
        "test metrics, confusion matrix, λ curve, ablation table, region overlays",
    ),
    "report": ("report", "ReportPaths", "the paper's tables beside this run's figures: reports/paper.md and .html"),
    "register": ("register", "RegisterPaths", "log + register the model in MLflow; promote to champion if better"),
}


def _add_path_options(parser: argparse.ArgumentParser, paths_cls) -> None:
    for f in dataclasses.fields(paths_cls):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, tuple):
            parser.add_argument(
                flag,
                type=Path,
                action="append",
                default=None,
                help=f"repeatable (default: {' '.join(map(str, f.default))})",
            )
        else:
            kind = Path if isinstance(f.default, Path) else type(f.default)
            parser.add_argument(flag, type=kind, default=f.default, help=f"(default: {f.default})")


def _run_stage(args: argparse.Namespace) -> dict:
    module = importlib.import_module(f"image_emotion.stages.{args.stage_module}")
    paths_cls = getattr(stage_paths, args.paths_class)
    values = {}
    for f in dataclasses.fields(paths_cls):
        value = getattr(args, f.name)
        values[f.name] = (tuple(value) if value else f.default) if isinstance(f.default, tuple) else value
    config = load_config(args.params, args.overrides)
    return module.run(config, paths_cls(**values))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="image-emotion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, paths_class, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: params.yaml)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a param, e.g. --set data.dataset=fi --set data.root=/data/FI (repeatable)",
        )
        _add_path_options(p, getattr(stage_paths, paths_class))
        p.set_defaults(func=_run_stage, stage_module=module_name, paths_class=paths_class)
    p = sub.add_parser("predict", help="emotion of image files: label, probabilities, top emotional regions")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--model-uri", default=None, help="an MLflow model, e.g. models:/image-emotion@champion")
    p.add_argument("--detector", type=Path, default=Path("models/detector/detector.pt"))
    p.add_argument("--head", type=Path, default=Path("models/classifier/head.pt"))
    p.set_defaults(func=_predict)

    p = sub.add_parser("params", help="check a params file against the schema, or write the defaults (--write)")
    p.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--write", action="store_true", help="write the schema's defaults (with comments) to --params")
    p.set_defaults(func=_params)

    p = sub.add_parser("compile-pipeline", help="compile the kfp v2 pipeline to YAML (pipelines/image_emotion.yaml)")
    p.add_argument("--out", type=Path, default=Path("pipelines/image_emotion.yaml"))
    p.set_defaults(func=_compile_pipeline)

    p = sub.add_parser("run-pipeline", help="run the whole kfp pipeline (--local: kfp.local, no cluster)")
    p.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--local", action="store_true", required=True, help="run with kfp.local.SubprocessRunner")
    p.add_argument("--pipeline-root", type=Path, default=Path("local_outputs"))
    p.add_argument("--mlflow-tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    p.set_defaults(func=_run_pipeline)
    return parser


def _predict(args: argparse.Namespace) -> dict:
    import pandas as pd

    from image_emotion.data.images import load_image
    from image_emotion.tracking.pyfunc import EmotionPredictor, encode_image_file

    for path in args.images:
        load_image(path)  # a bad file is named here, before the model loads
    frame = pd.DataFrame({"image": [encode_image_file(p) for p in args.images]})
    if args.model_uri:
        import mlflow

        out = mlflow.pyfunc.load_model(args.model_uri).predict(frame)
    else:
        out = EmotionPredictor(args.detector, args.head).predict(frame)
    return {
        str(p): {**row, "regions": json.loads(row["regions"])}
        for p, row in zip(args.images, out.to_dict("records"), strict=True)
    }


def _params(args: argparse.Namespace) -> dict:
    from image_emotion.config import render_params
    from image_emotion.files import write_text_atomic

    if args.write:
        write_text_atomic(args.params, render_params())
        return {"written": str(args.params)}
    return load_config(args.params, args.overrides).to_dict()


def _compile_pipeline(args: argparse.Namespace) -> dict:
    from image_emotion.kubeflow.pipeline import compile_pipeline

    return {"compiled": str(compile_pipeline(args.out))}


def _run_pipeline(args: argparse.Namespace) -> dict:
    from image_emotion.kubeflow.pipeline import run_local
    from image_emotion.tracking.runs import tracking_uri

    config = load_config(args.params, args.overrides)
    return run_local(config, args.pipeline_root.resolve(), args.mlflow_tracking_uri or tracking_uri(config))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``image-emotion`` command."""
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except ImageEmotionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; outputs written so far are complete (writes are atomic)", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
