"""``dvc.yaml`` generated from the stage declarations (``stages/paths.py``): each entry's command, its
dependencies (the dataset roots, the files its path fields read, and every source file the stage imports), the
params sections it reads, its outputs, metrics and plots. ``image-emotion dvc-yaml`` writes it;
``--check`` (and the test suite) refuses a committed file that differs.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import textwrap
from pathlib import Path
from typing import Any

import yaml

import image_emotion
from image_emotion.stages.paths import CHECKPOINT, DEP, METRIC, OUT, STAGES, Run, Stage, role

WIDTH = 118  # dvc.yaml's line length
PACKAGE_DIR = Path(image_emotion.__file__).parent
HEADER = """\
# GENERATED from the stage declarations (src/image_emotion/stages/paths.py) by `image-emotion dvc-yaml`: edit those.
#
# The training pipeline of seed 000 with the paper's data roles (params.yaml names a dataset for each):
# objects (COCO; or detector.object_weights) -> pretrain_objects -> detector_data (EmotionROI) -> finetune_detector
# -> extract regions of data (FI) and of every transfer set -> train_classifier on data -> transfer_cv for each
# transfer set -> evaluate -> report (the paper's tables beside ours) -> register. On the default every role is
# played by a synthetic set (make_synthetic). Seed 002 branches off the prepared sets: train_metric -> retrieve
# (index, measures, figures; the report reads them) -> register_metric. Seed 001 too: prepare_generative (sets of
# other emotion models) -> train_generative (one model for all; baselines; low-resource curve) ->
# evaluate_generative (the report reads it) -> register_generative.
# Every stage is `image-emotion <stage>`; the same functions run as kfp components (src/image_emotion/kubeflow).
# Each stage depends on every source file it imports, so a code change re-runs exactly the stages it can affect,
# and on the params sections it reads.
"""


def import_closure(module: str, package_dir: Path = PACKAGE_DIR) -> set[Path]:
    """The package's source files that importing ``module`` (``image_emotion.<...>``) executes, relative to the
    package's parent folder, found from the import statements anywhere in each file (package ``__init__`` files
    included)."""
    src = package_dir.parent
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        base = src.joinpath(*parts)
        path = base / "__init__.py" if (base / "__init__.py").is_file() else base.with_suffix(".py")
        if not path.is_file() or path.relative_to(src) in seen:
            continue
        seen.add(path.relative_to(src))
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package_dir.name):
                todo += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith(package_dir.name)]
    return seen


@functools.cache  # a stage's module is read once however many dvc.yaml entries run it
def source_deps(module: str, package_dir: Path = PACKAGE_DIR) -> tuple[str, ...]:
    """``import_closure`` as ``src/...`` paths, a sub-package named as one folder when every module in it is
    imported."""
    closure = import_closure(module, package_dir)
    src = package_dir.parent
    whole = {
        d.relative_to(src)
        for d in package_dir.rglob("*")
        if d.is_dir() and (d / "__init__.py").is_file() and all(p.relative_to(src) in closure for p in d.rglob("*.py"))
    }
    whole = {d for d in whole if not any(p in whole for p in d.parents)}  # the outermost whole folders
    kept = sorted({*whole, *(f for f in closure if not any(d in f.parents for d in whole))})
    return tuple(f"src/{p.as_posix()}" for p in kept)


def _cmd(cls: type[Stage], run: Run) -> str:
    words = [f"image-emotion {cls.command}", *(f"--set {o}" for o in run.overrides)]
    words += [f"--set-from {c}" for c in run.copies]  # params keys only: no value a user typed reaches the shell
    words += [
        f"--{f.name.replace('_', '-')} {run.paths[f.name]}" for f in dataclasses.fields(cls) if f.name in run.paths
    ]
    return " ".join(words)


def _tracked(f: dataclasses.Field, run: Run) -> str:
    if f.name in run.paths:
        return run.paths[f.name]
    if f.metadata.get("tracked"):
        return f.metadata["tracked"]
    return str(f.default[0] if isinstance(f.default, tuple) else f.default)


def entry(cls: type[Stage], run: Run) -> dict[str, Any]:
    """One stage of ``dvc.yaml`` (a ``foreach`` entry's template under ``do``)."""
    fields = dataclasses.fields(cls)
    deps = list(run.data)
    for f in fields:
        if role(f) == DEP and _tracked(f, run) not in deps:
            deps.append(_tracked(f, run))
    deps += source_deps(f"{PACKAGE_DIR.name}.stages.{cls.module}")
    reads = cls.reads if run.reads is None else run.reads
    stage: dict[str, Any] = {
        "cmd": _cmd(cls, run),
        "deps": deps,
        "params": [{"params.yaml": None}] if reads == ("*",) else list(reads),
    }
    outs: list[Any] = []
    for f in fields:
        if role(f) == OUT and _tracked(f, run) not in outs:
            options = {"persist": True} if f.metadata.get("persist") else {}
            outs.append({_tracked(f, run): options} if options else _tracked(f, run))
        elif role(f) == CHECKPOINT:
            outs.append({_tracked(f, run): {"persist": True, "cache": False}})
    if outs:
        stage["outs"] = outs
    metrics = [{_tracked(f, run): {"cache": False}} for f in fields if role(f) == METRIC]
    if metrics:
        stage["metrics"] = metrics
    return {"foreach": run.foreach, "do": stage} if run.foreach else stage


def pipeline() -> dict[str, Any]:
    """``dvc.yaml`` as data."""
    stages = {run.name: entry(cls, run) for cls in STAGES.values() for run in cls.dvc_runs()}
    return {"stages": stages, "plots": [p for cls in STAGES.values() for p in cls.dvc_plots]}


def _block(value: Any, indent: int) -> list[str]:
    """``value`` as block YAML lines at ``indent`` spaces."""
    text = yaml.safe_dump(value, sort_keys=False, width=10_000, allow_unicode=True, default_flow_style=False)
    text = text.replace(": null\n", ":\n")
    return [" " * indent + line for line in text.splitlines()]


def _stage_lines(name: str, stage: dict[str, Any], comment: str) -> list[str]:
    lines = [f"  {name}:" + (f"  # {comment}" if comment else "")]
    body, indent = stage, 4
    if "foreach" in stage:
        lines += [f"    foreach: {stage['foreach']}", "    do:"]
        body, indent = stage["do"], 6
    pad = " " * indent
    cmd = body["cmd"]
    if len(pad) + len("cmd: ") + len(cmd) <= WIDTH:
        lines.append(f"{pad}cmd: {cmd}")
    else:
        lines.append(f"{pad}cmd: >-")
        lines += textwrap.wrap(
            cmd,
            WIDTH,
            initial_indent=pad + "  ",
            subsequent_indent=pad + "  ",
            break_long_words=False,
            break_on_hyphens=False,
        )
    for key in ("deps", "params", "outs", "metrics"):
        if key in body:
            lines += [f"{pad}{key}:", *_block(body[key], indent + 2)]
    return lines


def render() -> str:
    """The text of ``dvc.yaml``."""
    data = pipeline()
    comments = {run.name: run.comment for cls in STAGES.values() for run in cls.dvc_runs()}
    lines = ["stages:"]
    for name, stage in data["stages"].items():
        lines += [*_stage_lines(name, stage, comments[name]), ""]
    lines += ["plots:", *_block(data["plots"], 2)]
    return HEADER + "\n".join(lines) + "\n"
