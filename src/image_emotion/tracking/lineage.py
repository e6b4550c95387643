"""Dataset lineage: which version of each dataset role trained a registered model.

A data version is the hash DVC gives the dataset's directory, found in this order:

1. ``<root>.dvc`` (``dvc add <root>`` or ``dvc import-url <url> <root>``, which also records the url);
2. an output of a stage in ``<project>/dvc.lock`` (e.g. ``make_synthetic``'s ``data/synthetic``);
3. the same two for a directory that *contains* the root (``dvc add data`` tracks ``data/fi`` too): the root's own
   hash is derived from the container's listing in the DVC cache exactly as DVC hashes a directory, else the
   container's hash stands for it (``within`` names the container);
4. otherwise a digest of the file listing (relative path, size, mtime), source ``unversioned``: the data is not
   under DVC (``dvc add`` it to version it).

``log_data_versions`` records the versions on an MLflow run (dataset inputs for the UI, ``data.<role>.*`` tags
for ``model_lineage``), which follows a registered model back to its pipeline run: git revision, dvc.lock hash,
params and data versions.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from image_emotion.config import Config
from image_emotion.errors import DatasetError, ImageEmotionError

UNVERSIONED = "unversioned"
TAG_PREFIX = "data."
MAX_DIGEST = 36  # mlflow.utils.validation.MAX_DATASET_DIGEST_SIZE: an md5 + ".dir" fits exactly


class LineageError(ImageEmotionError):
    """A model URI that names no registered model version, or a version without a run."""


@dataclass(frozen=True)
class DataVersion:
    """One dataset directory's version: ``digest`` as DVC hashes it (``….dir``), or a listing digest."""

    path: str  # the root as the config gives it
    digest: str
    source: str  # "dvc add" | "dvc import-url" | "dvc stage <name>" | "unversioned"
    url: str | None = None  # where `dvc import-url` copied it from
    within: str | None = None  # the DVC-tracked directory whose hash stands for the root's (no listing cached)
    changed: bool = False  # file count or size differ from what DVC recorded: run `dvc add` / `dvc repro`


# --- the roles ------------------------------------------------------------------------------------------------


def dataset_roots(config: Config) -> dict[str, Path]:
    """Every dataset role the stages read and its root directory (``objects`` only when pretrain_objects reads
    it, i.e. ``detector.object_weights`` is null)."""
    roots = {"data": Path(config.data.root), "detector_data": Path(config.detector_data.root)}
    if not config.detector.object_weights:
        roots["objects"] = Path(config.pretrain.root)
    roots.update({f"transfer:{s.name}": Path(s.root) for s in config.transfer.sets})
    roots.update({f"generative:{s.name}": Path(s.root) for s in config.generative.sets})
    return roots


def role_setting(role: str) -> str:
    """The params.yaml key that sets the root of ``role``."""
    kind, _, name = role.partition(":")
    keys = {"data": "data.root", "detector_data": "detector_data.root", "objects": "pretrain.root"}
    return keys.get(kind) or f"{kind}.sets[name={name}].root"


def data_versions(config: Config, project: Path, skip_missing: bool = False) -> dict[str, DataVersion]:
    """``data_version`` of every role of ``config`` (relative roots resolved against ``project``); a missing root
    is an error, or left out with ``skip_missing``."""
    out: dict[str, DataVersion] = {}
    for role, root in dataset_roots(config).items():
        if skip_missing and not (project / root).exists():
            continue
        out[role] = data_version(root, project, f"{role} ({role_setting(role)})")
    return out


# --- one root -------------------------------------------------------------------------------------------------


def data_version(root: Path, project: Path, role: str = "dataset") -> DataVersion:
    """The version of the dataset at ``root`` (relative to ``project`` unless absolute), see the module doc."""
    full = (project / root).resolve()
    if not full.exists():
        raise DatasetError(
            f"{role}: {root} not found (looked in {full}); point the setting at your copy of the dataset, or create "
            "it (`dvc repro` for a stage's output, `dvc pull` / `dvc checkout` for data under DVC)"
        )
    tracked = _tracked(full, project.resolve())
    if tracked is None or not _hash(tracked[1]):
        return DataVersion(root.as_posix(), _listing_digest(_listing(full)), UNVERSIONED)
    path, out, source, url = tracked
    digest, nfiles = _digest_at(out, full.relative_to(path).as_posix(), project)
    if digest is not None:
        size = out.get("size") if path == full else None
        return DataVersion(root.as_posix(), digest, source, url, changed=_changed(_listing(full), nfiles, size))
    return DataVersion(root.as_posix(), str(_hash(out)), source, url, within=os.path.relpath(path, project.resolve()))


def _tracked(full: Path, project: Path) -> tuple[Path, dict[str, Any], str, str | None] | None:
    """(tracked path, its DVC out entry, source, import url) of ``full`` or the nearest directory above it that
    a ``.dvc`` file or a dvc.lock output tracks, inside ``project`` (``full`` itself when outside it)."""
    lock_outs = _lock_outs(project)
    chain = [full, *full.parents] if full.is_relative_to(project) else [full]
    for path in chain:
        found = _dvc_file_out(path)
        if found is not None:
            return (path, *found)
        if path in lock_outs:
            out, stage = lock_outs[path]
            return path, out, f"dvc stage {stage}", None
        if path == project:
            break
    return None


def _dvc_file_out(path: Path) -> tuple[dict[str, Any], str, str | None] | None:
    """(out entry, source, url) from ``<path>.dvc`` when it tracks ``path``."""
    dvc_file = path.with_name(path.name + ".dvc")
    if not dvc_file.is_file():
        return None
    spec = _read_yaml(dvc_file)
    outs = [o for o in spec.get("outs") or [] if (dvc_file.parent / str(o.get("path", ""))).resolve() == path]
    if not outs:
        return None
    deps = spec.get("deps") or []
    if deps:  # `dvc import-url`: the one dep is the url it copied
        return outs[0], "dvc import-url", str(deps[0].get("path"))
    return outs[0], "dvc add", None


def _lock_outs(project: Path) -> dict[Path, tuple[dict[str, Any], str]]:
    """Every output in ``project/dvc.lock``: resolved path -> (out entry, stage name)."""
    lock = project / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = _read_yaml(lock).get("stages") or {}
    return {
        (project / str(out["path"])).resolve(): (out, name)
        for name, stage in stages.items()
        for out in (stage or {}).get("outs") or []
        if "path" in out
    }


def _read_yaml(path: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); restore it from git") from None
    return data if isinstance(data, dict) else {}


def _hash(out: dict[str, Any]) -> str | None:
    """The hash value of a DVC out entry (``hash: md5`` names the key holding it; DVC 2 files: ``md5``)."""
    return out.get(str(out.get("hash", "md5"))) or out.get("md5")


# --- digests --------------------------------------------------------------------------------------------------


def _digest_at(out: dict[str, Any], relpath: str, project: Path) -> tuple[str | None, int | None]:
    """(DVC's hash, file count) of ``relpath`` inside the tracked ``out`` ("." is the out itself); for a
    subdirectory the hash is derived from the out's ``.dir`` listing in the DVC cache (``None`` when absent)."""
    value = _hash(out)
    if relpath == ".":
        return value, out.get("nfiles")
    entries = _cached_listing(str(value), project) if value and value.endswith(".dir") else None
    if entries is None:
        return None, None
    prefix = relpath + "/"
    sub = [
        {"md5": e["md5"], "relpath": e["relpath"][len(prefix) :]} for e in entries if e["relpath"].startswith(prefix)
    ]
    if not sub:
        return None, None
    sub.sort(key=lambda e: e["relpath"])  # dvc_data's Tree.as_bytes: the sorted list as key-sorted JSON, md5
    return hashlib.md5(json.dumps(sub, sort_keys=True).encode()).hexdigest() + ".dir", len(sub)


def _cached_listing(value: str, project: Path) -> list[dict[str, Any]] | None:
    """The ``.dir`` object ``value`` from the project's DVC cache (``cache.dir`` honoured), or ``None``."""
    try:
        from dvc.config import Config as DvcConfig

        cache = Path(DvcConfig(dvc_dir=str(project / ".dvc"))["cache"].get("dir") or project / ".dvc/cache")
    except Exception:  # not a DVC project, or an unreadable config: the default place
        cache = project / ".dvc" / "cache"
    for base in (cache / "files" / "md5", cache):  # DVC 3, then DVC 2's layout
        path = base / value[:2] / value[2:]
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                return None
    return None


def _listing(full: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime ns) of every file under ``full`` (or of ``full`` itself), sorted."""
    if full.is_file():
        st = full.stat()
        return [(full.name, st.st_size, st.st_mtime_ns)]
    rows = []
    for folder, _, files in os.walk(full):
        for name in files:
            path = Path(folder, name)
            st = path.stat()
            rows.append((path.relative_to(full).as_posix(), st.st_size, st.st_mtime_ns))
    return sorted(rows)


def _listing_digest(rows: list[tuple[str, int, int]]) -> str:
    """32 hex digits of SHA-256 over the listing (changes with any file's name, size or mtime)."""
    blob = "".join(f"{rel}\t{size}\t{mtime}\n" for rel, size, mtime in rows).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _changed(rows: list[tuple[str, int, int]], nfiles: int | None, size: int | None) -> bool:
    """Whether the listing disagrees with the file count / total size DVC recorded (a cheap staleness check)."""
    if nfiles is not None and nfiles != len(rows):
        return True
    return size is not None and size != sum(r[1] for r in rows)


# --- MLflow ---------------------------------------------------------------------------------------------------


def version_tags(role: str, version: DataVersion) -> dict[str, str]:
    """The ``data.<role>.<field>`` run tags of one version (unset fields left out)."""
    fields = {k: v for k, v in asdict(version).items() if v not in (None, False)}
    return {f"{TAG_PREFIX}{role}.{k}": "true" if v is True else str(v) for k, v in fields.items()}


def _dataset_input(role: str, version: DataVersion, project: Path | None):
    """An MLflow ``DatasetInput``: a ``MetaDataset`` named after the role, with DVC's digest and a local
    source (the directory), the DVC facts in its profile, and the role as ``mlflow.data.context``."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    path = Path(version.path)
    uri = str(path if path.is_absolute() or project is None else (project / path).resolve())
    dataset = MetaDataset(LocalArtifactDatasetSource(uri), name=role, digest=version.digest[:MAX_DIGEST])
    profile = {k: v for k, v in asdict(version).items() if v not in (None, False)}
    entity = Dataset(**dataset.to_dict(), profile=json.dumps(profile, sort_keys=True))
    return DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, role)])


def log_data_versions(client, run_id: str, versions: dict[str, DataVersion], project: Path | None = None) -> None:
    """Record ``versions`` (role -> version) on the run: dataset inputs (the UI's dataset panel; relative paths
    shown resolved against ``project``) and ``data.<role>.*`` tags (what ``model_lineage`` reads)."""
    from mlflow.entities import RunTag

    if not versions:
        return
    tags = [RunTag(k, v) for role, version in versions.items() for k, v in version_tags(role, version).items()]
    client.log_batch(run_id, tags=tags)
    client.log_inputs(run_id, datasets=[_dataset_input(role, v, project) for role, v in versions.items()])


# --- a model's lineage ----------------------------------------------------------------------------------------


def _parse_model_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of ``models:/<name>@<alias>`` or ``models:/<name>/<version>``."""
    rest = model_uri.removeprefix("models:/") if model_uri.startswith("models:/") else ""
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if name and alias:
            return name, alias, None
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, version
    raise LineageError(f"{model_uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")


def _model_version(client, model_uri: str):
    """The registered model version ``model_uri`` names; a ``LineageError`` naming what exists otherwise."""
    from mlflow.exceptions import MlflowException

    name, alias, version = _parse_model_uri(model_uri)
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as exc:
        try:
            model = client.get_registered_model(name)
        except MlflowException:
            raise LineageError(f"{model_uri}: no registered model {name!r} in this tracking store") from None
        known = ", ".join(sorted(model.aliases)) or "none"
        raise LineageError(f"{model_uri}: not found ({exc.message}); aliases of {name!r}: {known}") from None


def _pipeline_run(client, run):
    """The run itself when it is a pipeline run or has no parent, else its nearest ``kind=pipeline`` ancestor
    through ``mlflow.parentRunId`` (the topmost one when none is tagged)."""
    seen = {run.info.run_id}
    while run.data.tags.get("kind") != "pipeline":
        parent = run.data.tags.get("mlflow.parentRunId")
        if not parent or parent in seen:
            break
        seen.add(parent)
        run = client.get_run(parent)
    return run


def datasets_from_tags(tags: dict[str, str]) -> dict[str, dict[str, str]]:
    """role -> {digest, source, path, ...} from a run's ``data.<role>.<field>`` tags."""
    out: dict[str, dict[str, str]] = {}
    for key, value in tags.items():
        if key.startswith(TAG_PREFIX) and key.count(".") >= 2:
            role, field = key.removeprefix(TAG_PREFIX).rsplit(".", 1)
            out.setdefault(role, {})[field] = value
    return dict(sorted(out.items()))


def model_lineage(client, model_uri: str) -> dict[str, Any]:
    """The lineage of a registered model version (JSON-able): the version, its run, the pipeline run's git
    revision, dvc.lock hash, pipeline key and params, and the version of every dataset role."""
    version = _model_version(client, model_uri)
    record: dict[str, Any] = {
        "model_uri": model_uri,
        "model": {
            "name": version.name,
            "version": str(version.version),
            "aliases": sorted(version.aliases or []),
            "tags": dict(version.tags or {}),
            "run_id": version.run_id,
        },
    }
    if not version.run_id:
        raise LineageError(f"{model_uri}: version {version.version} has no run, so no lineage was recorded")
    run = client.get_run(version.run_id)
    pipeline = _pipeline_run(client, run)
    tags = pipeline.data.tags
    record["run"] = {"id": run.info.run_id, "name": run.info.run_name, "stage": run.data.tags.get("stage")}
    record["pipeline"] = {
        "run_id": pipeline.info.run_id,
        "run_name": pipeline.info.run_name,
        **{k: tags.get(k) for k in ("pipeline_key", "git_revision", "dvc_lock")},
    }
    record["params"] = dict(sorted(pipeline.data.params.items()))
    record["datasets"] = datasets_from_tags(tags)
    return record


def _dataset_line(role: str, info: dict[str, str]) -> str:
    """One dataset role: digest, source, path, and the notes (import url, container, changed)."""
    notes = [f"from {info['url']}" if "url" in info else "", f"hash of {info['within']}" if "within" in info else ""]
    notes.append("CHANGED since DVC recorded it: run dvc add / dvc repro" if info.get("changed") == "true" else "")
    shown = "  ".join(info.get(k, "-") for k in ("digest", "source", "path"))
    return f"  {role:<20} {shown}" + "".join(f"; {n}" for n in notes if n)


def format_lineage(record: dict[str, Any]) -> str:
    """``model_lineage``'s record as readable text: model, run, code and data versions, then the params."""
    model, run, pipe = record["model"], record["run"], record["pipeline"]
    lines = [
        f"model         {model['name']} version {model['version']}",
        f"aliases       {', '.join(model['aliases']) or '-'}",
        f"run           {run['id']} ({run['name']}, stage {run['stage'] or '-'})",
        f"pipeline run  {pipe['run_id']} ({pipe['run_name']}, key {pipe['pipeline_key'] or '-'})",
        f"git revision  {pipe['git_revision'] or '-'}",
        f"dvc.lock      {pipe['dvc_lock'] or '-'}",
        "datasets" + ("" if record["datasets"] else "      - (none recorded)"),
    ]
    lines.extend(_dataset_line(role, info) for role, info in record["datasets"].items())
    lines.append("params")
    lines.extend(f"  {key} = {value}" for key, value in sorted(record["params"].items()))
    return "\n".join(lines)
