"""params.yaml: the one source of truth for every hyper-parameter; ``--set a.b=value`` overrides it."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from image_emotion.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read ``path`` (YAML mapping) and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the repository root or pass --params")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    return apply_overrides(params, overrides)


def apply_overrides(params: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``params`` with each ``a.b.c=value`` set (intermediate mappings created)."""
    out = copy.deepcopy(params)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a mapping in params")
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return out


def get(params: dict[str, Any], key: str, default: Any = ...) -> Any:
    """``params['a']['b']`` for ``key='a.b'``; a missing key without default names the key."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is ...:
                raise ConfigError(f"params.yaml: missing key {key!r}")
            return default
        node = node[part]
    return node
