"""``image-emotion``: one sub-command a pipeline stage. Errors print one line and exit with status 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from image_emotion.config import DEFAULT_PARAMS, load_params
from image_emotion.errors import ImageEmotionError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: params.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. --set data.dataset=fi --set data.root=/data/FI (repeatable)",
    )


def _make_embedded(args: argparse.Namespace) -> dict:
    from image_emotion.stages import make_embedded

    params = load_params(args.params, args.overrides)
    return make_embedded.run(params, make_embedded.MakeEmbeddedPaths(out_dir=args.out_dir))


def _prepare(args: argparse.Namespace) -> dict:
    from image_emotion.stages import prepare

    params = load_params(args.params, args.overrides)
    return prepare.run(params, prepare.PreparePaths(out_dir=args.out_dir, metrics=args.metrics))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="image-emotion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-embedded", help="draw the embedded default dataset (params: embedded)")
    _common(p)
    p.add_argument("--out-dir", type=Path, default=Path("data/embedded"))
    p.set_defaults(func=_make_embedded)

    p = sub.add_parser("prepare", help="dataset layout -> validated manifest, splits, folds (params: data, prepare)")
    _common(p)
    p.add_argument("--out-dir", type=Path, default=Path("data/prepared"))
    p.add_argument("--metrics", type=Path, default=Path("metrics/prepare.json"))
    p.set_defaults(func=_prepare)
    return parser


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
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
