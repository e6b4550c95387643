"""A project's own MLflow store that moved: its artifact locations follow it.

MLflow records artifact locations as absolute paths (``file:///home/a/image-emotion/mlruns/...``): a project
copied to another folder or machine, ``mlflow.db`` and ``mlruns/`` with it, still points at the old folder, so
its models do not load there (or load the old copy's files, and new runs write into it). ``relocate`` rewrites,
in the project's sqlite store, every location under another folder's ``mlruns/`` to the same place under this
project's ``mlruns/`` where that place exists here (experiments' roots whenever this project has ``mlruns/``).
Locations elsewhere (``s3://``, a server's ``mlflow-artifacts:``, a configured folder) are left alone. MLflow has
no call that changes a recorded location, so this is SQL on its tables (those present in this MLflow's schema),
in one transaction; the stages and the inference commands run it on the project's default store before use.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

COLUMNS = (  # table, column: the artifact locations MLflow 3 records
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)
ARTIFACTS = "mlruns"


def _local_path(location: str) -> str | None:
    """The local path of a ``file://`` URI or a plain absolute path; None for anything else."""
    if location.startswith("file://"):
        return location.removeprefix("file://")
    return location if location.startswith("/") else None


def _old_root(location: str, here: Path) -> tuple[str, str] | None:
    """(the other project's ``mlruns`` path, the part after it) when ``location`` lies under another folder's
    ``mlruns/``, else None."""
    path = _local_path(location)
    if path is None:
        return None
    parts = Path(path).parts
    if ARTIFACTS not in parts:
        return None
    cut = len(parts) - 1 - parts[::-1].index(ARTIFACTS)  # the last "mlruns" of the path
    old = str(Path(*parts[: cut + 1]))
    return None if old == str(here) else (old, "/".join(parts[cut + 1 :]))


def _columns(connection: sqlite3.Connection) -> list[tuple[str, str]]:
    present = []
    for table, column in COLUMNS:
        names = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        if column in names:
            present.append((table, column))
    return present


def relocate(db: Path, root: Path, quiet: bool = False) -> int:
    """Point the artifact locations of the sqlite store ``db`` that lie under another folder's ``mlruns/`` at
    ``root/mlruns/`` where the same files are here. Returns the number of values rewritten (0: nothing moved)."""
    here = (root / ARTIFACTS).resolve()
    if not db.is_file() or not here.is_dir():
        return 0
    connection = sqlite3.connect(db, timeout=60)
    try:
        columns = _columns(connection)
        moves: dict[str, str] = {}  # old mlruns path -> this one, for the olds whose files are here
        for table, column in columns:
            for (value,) in connection.execute(f"SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL"):
                found = _old_root(str(value), here)
                if found and found[0] not in moves and (here / found[1]).exists():
                    moves[found[0]] = str(here)
        changed = 0
        with connection:  # one transaction
            for old, new in moves.items():
                for prefix_old, prefix_new in ((f"file://{old}", f"file://{new}"), (old, new)):
                    for table, column in columns:
                        changed += connection.execute(
                            f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                            f"WHERE substr({column}, 1, ?) = ? AND substr({column}, ?, 1) IN ('', '/')",
                            (prefix_new, len(prefix_old) + 1, len(prefix_old), prefix_old, len(prefix_old) + 1),
                        ).rowcount
    finally:
        connection.close()
    if changed and not quiet:
        olds = ", ".join(sorted(moves))
        print(f"tracking: {db} was moved; {changed} artifact locations under {olds} now point under {here}",
              file=sys.stderr)  # fmt: skip
    return changed


def relocate_project_store(uri: str) -> int:
    """``relocate`` for the project's own store (``runs.default_tracking_uri()``, a sqlite file with ``mlruns/``
    beside it) when ``uri`` is it; any other store is left alone. Returns the values rewritten."""
    from image_emotion.tracking.runs import default_tracking_uri

    if uri != default_tracking_uri() or not uri.startswith("sqlite:///"):
        return 0
    db = Path(uri.removeprefix("sqlite:///"))
    return relocate(db, db.resolve().parent)
