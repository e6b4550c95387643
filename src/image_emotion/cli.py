"""``image-emotion``: one sub-command a pipeline stage, plus ``predict``, ``retrieve`` (seed 002: the images
nearest in feeling to query images) and ``describe`` (seed 001: every emotion model from one generative
model). Errors print one line; the exit status says what happened (``EXIT_CODES``); ``--debug`` (or
``IMAGE_EMOTION_DEBUG=1``, for commands that ``dvc repro`` or a pipeline runs) adds the traceback.

Every stage sub-command takes ``--params`` / ``--set key=value`` and one option per path of the stage's
``*Paths`` dataclass (``--out-dir``, ``--metrics``, ...), defaulting to the paths ``dvc.yaml`` uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from image_emotion.config import DEFAULT_PARAMS, Config, copied_values, load_config
from image_emotion.errors import ConfigError, ImageEmotionError
from image_emotion.figures import MIN_DRAWN_SCORE
from image_emotion.inference import DEMO_PORT
from image_emotion.kubeflow.builder import WORK_DIR
from image_emotion.kubeflow.cluster import DEFAULTS as CLUSTER
from image_emotion.kubeflow.images import BASE_IMAGE
from image_emotion.kubeflow.registry import DEFAULT_PORT
from image_emotion.stages import paths as stage_paths

STAGES = stage_paths.STAGES  # sub-command -> the stage's declaration


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
    paths_cls = STAGES[args.command]
    module = importlib.import_module(f"image_emotion.stages.{paths_cls.module}")
    values = {}
    for f in dataclasses.fields(paths_cls):
        value = getattr(args, f.name)
        values[f.name] = (tuple(value) if value else f.default) if isinstance(f.default, tuple) else value
    config = load_config(args.params, args.overrides)
    if args.set_from:
        config = config.with_values(copied_values(config.to_dict(), args.set_from))
    options = {name: getattr(args, name) for name in args.stage_options}
    return module.run(config, paths_cls(**values), **options)


def _shard_spec(text: str) -> tuple[int, int]:
    """``--shard I/N``: shard ``I`` (from 0) of ``N``."""
    head, sep, tail = text.partition("/")
    try:
        shard, shards = int(head), int(tail)
    except ValueError:
        shard, shards = -1, 0
    if not sep or shards < 1 or not 0 <= shard < shards:
        raise argparse.ArgumentTypeError(f"must be I/N with N >= 1 and 0 <= I < N (e.g. 0/4), got {text!r}")
    return shard, shards


def _add_model_options(parser: argparse.ArgumentParser, kind: str, registered: str) -> None:
    """--model-uri, one option per local file of the model ``kind`` and --params, as ``inference.models`` reads
    them."""
    from image_emotion.inference.models import KINDS

    files = KINDS[kind].files
    parser.add_argument(
        "--model-uri",
        default=None,
        help=f"an MLflow model (default: the local files when named, else models:/<register.{registered}>@champion "
        f"when the registry has one, else {' and '.join(map(str, files.values()))})",
    )
    for name, default in files.items():
        parser.add_argument(f"--{name}", type=Path, default=None, help=f"(default: {default})")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="for the model's name and tracking URI")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    from image_emotion import __version__

    parser = argparse.ArgumentParser(prog="image-emotion", description=__doc__)
    parser.add_argument("--version", action="version", version=f"image-emotion {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of an error (also: IMAGE_EMOTION_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, declaration in STAGES.items():
        p = sub.add_parser(name, help=declaration.help, description=declaration.help)
        p.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: params.yaml)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a param, e.g. --set data.dataset=fi --set data.root=/data/FI (repeatable)",
        )
        p.add_argument(
            "--set-from",
            dest="set_from",
            action="append",
            default=[],
            metavar="KEY=OTHER",
            help="set a param to another param's value, e.g. --set-from data.root=transfer.sets.small.root "
            "(a list item by its name; repeatable; applied after --set)",
        )
        _add_path_options(p, declaration)
        p.set_defaults(func=_run_stage, stage_options=())
        if name == "extract-regions":
            p.add_argument(
                "--shard",
                type=_shard_spec,
                default=(0, 1),
                metavar="I/N",
                help="compute only shard I of N of each cache (its ranges dealt round-robin); join the N parts "
                "with `merge-features` (default: 0/1, the whole cache)",
            )
            p.set_defaults(stage_options=("shard",))
    p = sub.add_parser(
        "merge-features",
        help="join the caches of `extract-regions --shard I/N` into the cache an unsharded run writes",
    )
    p.add_argument("--parts", type=Path, nargs="+", required=True, metavar="DIR", help="the N shards' caches")
    p.add_argument("--features", type=Path, required=True, metavar="OUT", help="the merged cache (replaced)")
    p.set_defaults(func=_merge_features)

    p = sub.add_parser(
        "predict", help="emotion of images: a table (or --json) of emotion, confidence, polarity; region overlays"
    )
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--json", action="store_true", help="print JSON {image: {label, polarity, probabilities, ...}}")
    p.add_argument(
        "--overlay",
        type=Path,
        default=None,
        metavar="DIR",
        help="write each image with its top regions (rank · S_emo = √(p_emo² + p_obj²), from 0 to 1.41)",
    )
    p.add_argument(
        "--overlay-min-score",
        type=float,
        default=None,
        metavar="S",
        help=f"--overlay: leave out regions scoring under S (default: {MIN_DRAWN_SCORE})",
    )
    _add_model_options(p, "emotion", "model_name")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="images a forward pass (default: 8)")
    p.set_defaults(func=_predict)

    p = sub.add_parser(
        "retrieve", help="seed 002: images nearest in feeling to query images (saved index, a folder, or MLflow)"
    )
    p.add_argument("images", nargs="+", metavar="QUERY", help="image files, folders (searched recursively) or globs")
    p.add_argument("--k", type=_positive_int, default=5, help="neighbours per query (default: 5)")
    p.add_argument(
        "--collection",
        type=Path,
        default=None,
        metavar="DIR",
        help="search the images under DIR (embedded now, labels predicted) instead of the saved index",
    )
    p.add_argument("--json", action="store_true", help="print JSON {query: {label, polarity, neighbours}}")
    p.add_argument(
        "--grid",
        type=Path,
        default=None,
        metavar="PNG",
        help="also draw each query with its neighbours (green: same emotion, orange: same polarity, red: other)",
    )
    _add_model_options(p, "retrieval", "retrieval_model_name")
    p.set_defaults(func=_retrieve)

    p = sub.add_parser(
        "describe", help="seed 001: each image's label in every emotion model from one generative model (a table)"
    )
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument(
        "--emotion-models", default="", help="comma-separated, e.g. mikels8,binary (default: every one it answers)"
    )
    p.add_argument("--json", action="store_true", help="print JSON {image: [{emotion_model, label, ...}, ...]}")
    _add_model_options(p, "generative", "generative_model_name")
    p.set_defaults(func=_describe)

    p = sub.add_parser(
        "demo",
        help="a web page on loopback: drop an image, see its emotion distribution, regions, nearest images and "
        "generated labels",
        description="Serves a small page on 127.0.0.1 over the same inference functions as predict, retrieve and "
        "describe, each model chosen by their rule (the registry's champion, else the files dvc repro writes). "
        "Uploads are held to params.yaml's serving limits. Ctrl-C stops it.",
    )
    p.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: params.yaml)")
    p.add_argument(
        "--port", type=int, default=DEMO_PORT, help=f"port on 127.0.0.1 (default: {DEMO_PORT}; 0: any free one)"
    )
    p.add_argument("--k", type=_positive_int, default=5, help="nearest images shown (default: 5)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("params", help="check a params file against the schema, or write the defaults (--write)")
    p.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: params.yaml)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one setting"
    )
    p.add_argument("--write", action="store_true", help="write the schema's defaults (with comments) to --params")
    p.add_argument(
        "--profile",
        default=None,
        help="with --write: a named configuration instead of the defaults (paper: the papers' full setup, for a GPU "
        "and the real datasets; params.paper.yaml is it, written)",
    )
    p.set_defaults(func=_params)

    p = sub.add_parser("summary", help="a short summary of the run in metrics/: headline figures, report, next step")
    p.add_argument("--metrics", type=Path, default=Path("metrics"), help="(default: %(default)s)")
    p.set_defaults(func=_summary)

    p = sub.add_parser("readme-results", help="write README.md's results block from metrics/ (--check: is it fresh)")
    p.add_argument("--readme", type=Path, default=Path("README.md"), help="(default: %(default)s)")
    p.add_argument("--metrics", type=Path, default=Path("metrics"), help="(default: %(default)s)")
    p.add_argument("--check", action="store_true", help="only check the block; exit 1 when it is stale")
    p.set_defaults(func=_readme_results)

    p = sub.add_parser(
        "compile-pipeline",
        help="compile the kfp v2 pipeline (pipelines/image_emotion.yaml) and its components (components/<name>/)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("pipelines/image_emotion.yaml"),
        help="the compiled pipeline (default: %(default)s)",
    )
    p.add_argument("--components", type=Path, default=Path("components"), help="the components' folder")
    p.add_argument("--registry", default=CLUSTER.registry, help=f"image registry (default: {CLUSTER.registry})")
    p.add_argument(
        "--parallelism", type=int, default=CLUSTER.parallelism, help="pods of one ParallelFor at once (0: all)"
    )
    p.add_argument(
        "--gpu-type",
        default=CLUSTER.gpu_type,
        help=f"the GPU steps' accelerator (default: {CLUSTER.gpu_type}); 'none' for a cluster without GPUs "
        "(kind, k3d): those steps then run on CPU",
    )
    p.add_argument(
        "--by-digest",
        action="store_true",
        help="name each image by the digest its registry gives its tag (after build-images --push); refused if missing",
    )
    p.set_defaults(func=_compile_pipeline)

    p = sub.add_parser(
        "dvc-yaml", help="write dvc.yaml from the stage declarations (src/image_emotion/stages/paths.py)"
    )
    p.add_argument("--out", type=Path, default=Path("dvc.yaml"), help="(default: %(default)s)")
    p.add_argument("--check", action="store_true", help="only check that --out is what the declarations give")
    p.set_defaults(func=_dvc_yaml)

    p = sub.add_parser("lock", help="compile the images' hashed lock (requirements/) from pyproject.toml with uv")
    p.add_argument("--check", action="store_true", help="only check that the lock matches pyproject.toml")
    p.set_defaults(func=_lock)

    p = sub.add_parser(
        "build-images",
        help="build the CPU and CUDA images the pipeline names (docker, or podman/buildah without a daemon); --push",
    )
    p.add_argument("--registry", default=CLUSTER.registry, help=f"image registry (default: {CLUSTER.registry})")
    p.add_argument(
        "--base-image",
        default=BASE_IMAGE,
        help=f"the base, with Python 3.11 (default: {BASE_IMAGE}); `debian`: made here from Debian's packages",
    )
    p.add_argument(
        "--engine",
        choices=("auto", "docker", "podman", "buildah"),
        default="auto",
        help="the container tool (default: docker where its daemon answers, else podman, else buildah)",
    )
    p.add_argument(
        "--wheels",
        type=Path,
        default=None,
        help="a folder of wheels the build installs from first (filled by pip here; podman/buildah only)",
    )
    p.add_argument("--work", type=Path, default=WORK_DIR, help="the tools' settings and the Debian base")
    p.add_argument("--push", action="store_true", help="push both images and print the digests the registry gives")
    p.add_argument("--dry-run", action="store_true", help="print the build commands, run nothing")
    p.set_defaults(func=_build_images)

    p = sub.add_parser("registry", help="start / stop a container registry on 127.0.0.1 (Debian's docker-registry)")
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument("--dir", type=Path, default=WORK_DIR / "registry", help="its storage and state")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="its port on 127.0.0.1 (default: %(default)s)")
    p.set_defaults(func=_registry)

    p = sub.add_parser(
        "container-check",
        help="build, push and run the whole pipeline in the images (kfp.local.DockerRunner) against a tracking server",
    )
    p.add_argument("--work", type=Path, default=WORK_DIR, help="registry, runs (default: %(default)s)")
    p.add_argument(
        "--engine",
        choices=("auto", "docker", "podman"),
        default="auto",
        help="the container tool (default: docker where its daemon answers, else podman)",
    )
    p.add_argument("--base-image", default="debian", help="the base (default: made here from Debian's packages)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="the local registry's port (default: %(default)s)")
    p.add_argument(
        "--wheels", type=Path, default=None, help="the wheel cache (default: shared by this machine's checkouts)"
    )
    p.set_defaults(func=_container_check)

    p = sub.add_parser(
        "run-pipeline",
        help="run the whole kfp pipeline here (--local: kfp.local, no cluster) or submit it to a cluster (--host)",
        description="--local runs every step here with kfp.local. --host submits the compiled pipeline (--package) to "
        "a Kubeflow Pipelines backend, after checking that the backend is the minimum version or later "
        "(image_emotion.kubeflow.submit.MIN_KFP_BACKEND); prints the run's id and link.",
    )
    p.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: params.yaml)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one setting"
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", action="store_true", help="run with kfp.local.SubprocessRunner")
    where.add_argument("--host", default="", help="the KFP API endpoint, e.g. https://kubeflow.example.org/pipeline")
    p.add_argument("--pipeline-root", type=Path, default=Path("local_outputs"), help="--local: where outputs go")
    p.add_argument(
        "--mlflow-tracking-uri",
        default="",
        help="--local: default $MLFLOW_TRACKING_URI or the project's mlflow.db; --host: the MLflow server the pods "
        "reach (required), e.g. http://mlflow.mlflow.svc:5000",
    )
    p.add_argument(
        "--package", type=Path, default=Path("pipelines/image_emotion.yaml"), help="--host: the compiled pipeline"
    )
    p.add_argument(
        "--arg",
        dest="arguments",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="--host: a pipeline parameter (extraction_shards=8, workers=4, data_pvc=..., gpu_node_selector={...})",
    )
    p.add_argument("--experiment", default="image-emotion", help="--host: the KFP experiment")
    p.add_argument("--run-name", default=None, help="--host: the run's name (default: kfp's, with the time)")
    p.add_argument("--namespace", default=None, help="--host: the user namespace (multi-user Kubeflow)")
    p.add_argument(
        "--skip-version-check",
        action="store_true",
        help="--host: submit even when the backend reports no release number (a build of your own)",
    )
    p.set_defaults(func=_run_pipeline)

    p = sub.add_parser(
        "tracking-server",
        help="start / stop the deployed tracking stack here: mlflow server on PostgreSQL with S3 artifacts",
    )
    p.add_argument(
        "action",
        choices=("start", "stop", "status", "env"),
        help="env: print the export lines a client needs, the password included",
    )
    p.add_argument("--dir", type=Path, default=Path(".tracking"), help="its data, logs and state (default: .tracking)")
    p.add_argument("--port", type=int, default=5000, help="the server's port on --host (default: 5000)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address the server listens on (default: 127.0.0.1, this machine only); 0.0.0.0 or an interface's "
        "address opens it to the network, over plain HTTP: put TLS in front",
    )
    p.add_argument("--s3-endpoint", default=None, help="an S3 / MinIO endpoint for artifacts (default: a moto server)")
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="UNSAFE: MLflow without authentication, as before: whoever reaches the port can read, change and "
        "delete every run and model, and register models others will load (which runs their code); loopback only",
    )
    p.set_defaults(func=_tracking_server)

    p = sub.add_parser(
        "lineage", help="a registered model's git revision, params and data versions (models:/image-emotion@champion)"
    )
    p.add_argument("model_uri", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="for mlflow.tracking_uri (default: params.yaml)")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.set_defaults(func=_lineage)
    return parser


def _merge_features(args: argparse.Namespace) -> dict:
    from image_emotion.training.feature_cache import merge_caches

    return merge_caches(args.parts, args.features)


def _tracking_server(args: argparse.Namespace) -> int:
    import time

    from image_emotion.tracking.stack import (
        CREDENTIALS_FILE,
        TrackingStack,
        describe,
        is_running,
        load_credentials,
        load_state,
    )

    began = time.monotonic()
    if args.action == "start":
        stack = TrackingStack(
            args.dir, port=args.port, s3_endpoint=args.s3_endpoint, host=args.host, auth=not args.no_auth
        )
        state = stack.start()
        credentials = load_credentials(args.dir)
        print(f"tracking stack up in {time.monotonic() - began:.1f} s (logs in {args.dir})")
        print("\n".join(describe(state, credentials, stack.created_credentials)))
        return 0
    if args.action == "stop":
        TrackingStack(args.dir).stop()
        print(f"tracking stack stopped in {time.monotonic() - began:.1f} s")
        return 0
    state = load_state(args.dir)
    if args.action == "env":  # asked for: the one place after the first start that prints the password
        exports = {"MLFLOW_TRACKING_URI": state.tracking_uri}
        exports |= load_credentials(args.dir).client_env() if state.auth else {}
        print("\n".join(f"export {k}={v}" for k, v in exports.items()))
        return 0
    up = is_running(state)
    auth = f"basic auth, credentials in {args.dir / CREDENTIALS_FILE}" if state.auth else "NO auth"
    print(f"{state.tracking_uri}: {'up' if up else 'not answering'} ({auth})")
    return 0 if up else 1


def _lineage(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    from image_emotion.tracking import lineage
    from image_emotion.tracking.runs import reachable, tracking_uri

    config = load_config(args.params, []) if args.params.is_file() else Config()  # only its tracking URI is read
    with reachable(config):
        record = lineage.model_lineage(MlflowClient(tracking_uri(config)), args.model_uri)
    print(json.dumps(record, indent=2, sort_keys=True) if args.json else lineage.format_lineage(record))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _answer_images(args: argparse.Namespace, kind: str, named: dict, run, unused: tuple[str, ...] = ()) -> tuple:
    """(decoded images by file, ``run(images, predictor)``'s answer by file, failures by argument or file) for
    ``args.images``, the model of ``kind`` chosen by ``inference.models.resolve`` (named on stderr); no model is
    loaded when no image decodes."""
    from image_emotion.inference import inputs, models

    files, failures = inputs.expand_inputs(args.images)
    images, bad = inputs.decode(files)
    failures.update(bad)
    results = {}
    if images:
        batch_size = getattr(args, "batch_size", 8)
        model = models.resolve(kind, args.model_uri, named, args.params, batch_size, unused=unused)
        print(f"model: {model.source}", file=sys.stderr)
        if model.warning:
            print(f"warning: {model.warning}", file=sys.stderr)
        results = dict(zip(images, run(list(images.values()), model.predictor), strict=True))
    return images, results, failures


def _predict(args: argparse.Namespace) -> int:
    """``predict``: every image's emotion; a bad file is reported and skipped; exit status 1 when any failed."""
    from image_emotion.inference import tables
    from image_emotion.inference.predict import predict, write_overlays

    named = {"detector": args.detector, "head": args.head}
    images, results, failures = _answer_images(
        args, "emotion", named, lambda batch, model: predict(batch, model, args.batch_size)
    )
    if args.overlay is not None:
        write_overlays(results, images, args.overlay, args.overlay_min_score)
    _print_answers(results, failures, tables.predictions, args.json)
    return 1 if failures else 0


def _demo(args: argparse.Namespace) -> int:
    """``demo``: load the models once, serve the page on loopback until interrupted."""
    from image_emotion.config import Config
    from image_emotion.inference.demo import DemoModels, serve

    config = load_config(args.params) if args.params.is_file() else Config()
    models = DemoModels.load(args.params)
    for kind, about in models.describe().items():
        print(f"{kind}: {about.get('source') or 'not available: ' + about['missing']}", file=sys.stderr)
    if not models.resolved:
        raise ConfigError("no model to serve: run `dvc repro` first (or register models in the tracking store)")
    server = serve(models, config.serving, args.port, min(args.k, config.serving.max_k))
    host, port = server.server_address[:2]
    print(f"demo: http://{host}:{port}/  (Ctrl-C stops it)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _describe(args: argparse.Namespace) -> int:
    """``describe``: every image in every emotion model the generative model answers; bad files are reported and
    skipped; exit status 1 when any failed."""
    from image_emotion.inference import tables
    from image_emotion.inference.describe import describe

    _, results, failures = _answer_images(
        args, "generative", {"model": args.model}, lambda batch, model: describe(batch, model, args.emotion_models)
    )
    _print_answers(results, failures, tables.descriptions, args.json)
    return 1 if failures else 0


def _retrieve(args: argparse.Namespace) -> int:
    """``retrieve``: the predicted emotion of each query image and its ``k`` nearest images; bad queries are
    reported and skipped; exit status 1 when any failed."""
    from image_emotion.inference import tables
    from image_emotion.inference.retrieve import retrieve

    _, results, failures = _answer_images(
        args,
        "retrieval",
        {"model": args.model, "index": args.index},
        lambda batch, model: retrieve(batch, model, args.k, args.collection),
        unused=("index",) if args.collection is not None else (),
    )
    if args.grid is not None:
        _draw_grid(results, args.grid)
    header = "predicted" if args.collection is not None else "label"
    _print_answers(results, failures, lambda r: tables.neighbours(r, header), args.json)
    return 1 if failures else 0


def _print_answers(results: dict, failures: dict[str, str], table, as_json: bool) -> None:
    """The answers as JSON (``{file: answer, failed file: {"error": reason}}``) or as ``table`` gives them; the
    failures, one line each, on stderr (with the table)."""
    from image_emotion.inference.tables import failures as failure_lines

    if as_json:
        answers = {
            str(p): a.to_dict() if hasattr(a, "to_dict") else [x.to_dict() for x in a] for p, a in results.items()
        }
        print(json.dumps({**answers, **{k: {"error": v} for k, v in failures.items()}}, indent=2))
        return
    if results:
        print(table(results))
    if failures:
        print(failure_lines(failures), file=sys.stderr)


def _draw_grid(result: dict, out: Path) -> None:
    """``--grid``: each query (its predicted emotion) with its neighbours, framed by agreement with it."""
    from image_emotion.figures import query_grid, relevance

    rows = [
        {
            "query": str(path),
            "label": answer.label,
            "neighbours": [{**vars(n), "relevance": relevance(answer.label, n.label)} for n in answer.neighbours],
        }
        for path, answer in result.items()
    ]
    query_grid(rows, out)


def _params(args: argparse.Namespace) -> dict:
    from image_emotion.config import profile_config, render_params
    from image_emotion.files import write_text_atomic

    if args.profile and not args.write:
        raise ConfigError("--profile writes a params file: add --write (and --params <file>)")
    if args.write:
        config = profile_config(args.profile) if args.profile else None
        if config is not None and args.overrides:
            config = config.with_overrides(args.overrides)
        text = render_params(config)
        if args.profile:
            text = (
                f"# The `{args.profile}` profile, written by `image-emotion params --profile {args.profile} --write`: "
                f"its keys\n# (src/image_emotion/profiles/{args.profile}.yaml, each with its source) over the "
                "defaults.\n" + text
            )
        write_text_atomic(args.params, text)
        return {"written": str(args.params), **({"profile": args.profile} if args.profile else {})}
    return load_config(args.params, args.overrides).to_dict()


def _summary(args: argparse.Namespace) -> int:
    from image_emotion.report.summary import summary

    print(summary(args.metrics))
    return 0


def _readme_results(args: argparse.Namespace) -> int:
    from image_emotion.report.readme_results import update

    fresh = update(args.readme, args.metrics, check=args.check)
    if args.check and not fresh:
        print(f"{args.readme}'s results are stale; run `image-emotion readme-results`", file=sys.stderr)
        return 1
    print(f"{args.readme}: results {'fresh' if fresh else 'written'} from {args.metrics}")
    return 0


def _compile_pipeline(args: argparse.Namespace) -> dict:
    from image_emotion.kubeflow.catalog import write_components
    from image_emotion.kubeflow.images import KINDS, images
    from image_emotion.kubeflow.pipeline import compile_pipeline
    from image_emotion.kubeflow.registry import manifest_digest

    built = images(args.registry)
    if args.by_digest:
        built = built.by_digest({kind: manifest_digest(built.tagged(kind)) for kind in KINDS})
    compiled = compile_pipeline(args.out, args.registry, args.parallelism, args.gpu_type, built=built)
    written = write_components(args.components, built)
    return {"compiled": str(compiled), "components": len(written), "cpu_image": built.cpu, "cuda_image": built.cuda}


def _dvc_yaml(args: argparse.Namespace) -> dict:
    from image_emotion.files import write_text_atomic
    from image_emotion.stages.dvc_yaml import render

    text = render()
    if args.check:
        if not args.out.is_file() or args.out.read_text(encoding="utf-8") != text:
            raise ConfigError(f"{args.out} differs from the stage declarations: run `image-emotion dvc-yaml`")
        return {"fresh": str(args.out)}
    write_text_atomic(args.out, text)
    return {"written": str(args.out), "stages": sum(len(cls.dvc_runs()) for cls in STAGES.values())}


def _lock(args: argparse.Namespace) -> dict:
    from image_emotion import lock
    from image_emotion.kubeflow.images import source_root

    root = source_root()
    if args.check:
        return {"lock": str(root / lock.LOCK), "packages": len(lock.check_lock(root))}
    return lock.lock_all(root)


def _build_images(args: argparse.Namespace) -> dict | int:
    import shlex

    from image_emotion.kubeflow import builder
    from image_emotion.kubeflow.images import KINDS, images, source_root

    root = source_root()
    built = images(args.registry)
    if args.dry_run:  # the commands with the base as given (not pulled, not pinned)
        engine = builder.Engine("docker" if args.engine == "auto" else args.engine)
        plan, _ = builder.plan(built, args.base_image, root, args.wheels)
        commands = [builder.build_command(engine, plan, kind) for kind in KINDS]
        commands += [builder.push_command(engine, built.tagged(kind)) for kind in KINDS] if args.push else []
        for command in commands:
            sys.stdout.write(shlex.join(command) + "\n")  # not print: kfp.local, once run, re-indents print
        return 0
    engine = builder.find_engine(args.work, args.engine)
    return builder.build_images(engine, built, args.base_image, root, args.work, args.wheels, push_them=args.push)


def _registry(args: argparse.Namespace) -> dict | int:
    from image_emotion.kubeflow.registry import LocalRegistry

    registry = LocalRegistry(args.dir, args.port)
    if args.action == "start":
        state = registry.start()
        return {"registry": state.address, "storage": state.storage, "push_to": f"{state.address}/image-emotion"}
    if args.action == "stop":
        return {"stopped": registry.stop()}
    state = registry.running()
    print(f"{state.address}: up" if state else f"no registry started from {args.dir} answers")
    return 0 if state else 1


def _container_check(args: argparse.Namespace) -> dict:
    from image_emotion.kubeflow.container_check import check
    from image_emotion.kubeflow.images import source_root

    return check(args.work, source_root(), args.engine, args.base_image, args.port, args.wheels)


def _run_pipeline(args: argparse.Namespace) -> dict:
    config = load_config(args.params, args.overrides)
    if args.host:
        from image_emotion.kubeflow.submit import submit

        return submit(
            config,
            args.package,
            args.host,
            args.mlflow_tracking_uri,
            args.arguments,
            experiment=args.experiment,
            run_name=args.run_name,
            namespace=args.namespace,
            check_version=not args.skip_version_check,
        )
    from image_emotion.kubeflow.pipeline import run_local
    from image_emotion.tracking.runs import tracking_uri

    return run_local(config, args.pipeline_root.resolve(), args.mlflow_tracking_uri or tracking_uri(config))


EXIT_CODES = {  # documented in docs/pipeline.md (Errors and exit codes)
    0: "done",
    1: "done, but some inputs failed (each listed with its reason) or a --check found something stale",
    2: "usage or setup: a bad option, params file, dataset, model or path (one line names it and the fix)",
    3: "an unexpected error inside image-emotion (a bug: run again with --debug and report the traceback)",
    130: "interrupted (Ctrl-C); what was written is complete, and training resumes from its checkpoint",
}
DEBUG_ENV = "IMAGE_EMOTION_DEBUG"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``image-emotion`` command; returns an exit status of ``EXIT_CODES``."""
    args = build_parser().parse_args(argv)  # a usage error exits 2 here (argparse)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted; outputs written so far are complete (writes are atomic)", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 3 if unexpected(exc) else 2
    if isinstance(result, int):  # a sub-command that printed its own output and chose the exit status
        return result
    if result is not None and _prints_result():  # sub-commands that print their own output return None
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


def unexpected(exc: BaseException) -> bool:
    """Whether ``exc`` is a bug rather than the user's input or setup: not one of the project's own errors (which
    name the thing and the fix) nor an operating-system error (a file, folder, disk or connection)."""
    return not isinstance(exc, ImageEmotionError | OSError)


def error_line(exc: BaseException) -> str:
    """The one line an error prints: the project's own message; an OS error's file and reason; otherwise the
    error's type and first line, and how to see the rest."""
    if isinstance(exc, ImageEmotionError):
        return str(exc)
    if isinstance(exc, OSError):
        names = " -> ".join(str(n) for n in (exc.filename, exc.filename2) if n is not None)
        reason = exc.strerror or str(exc) or type(exc).__name__
        return f"{names}: {reason}" if names else reason
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return f"unexpected {what} (a bug: run again with --debug for the traceback, and report it)"


def _prints_result() -> bool:
    """Whether this process prints its result: always, but under torchrun only rank 0 (the others' stage result
    is a stub; see ``training/distributed.py``)."""
    if "RANK" not in os.environ:
        return True
    from image_emotion.training.distributed import is_main

    return is_main()


if __name__ == "__main__":
    sys.exit(main())
