"""Files that survive crashes and power loss: atomic writes (readers see the old output or the new one, never half
of one), content hashes, and torch checkpoints that keep the previous good one and load whole or fail with a
one-line error.

What holds where (POSIX; on ext4, xfs, btrfs and tmpfs):

- ``atomic_path``, ``write_text_atomic``, ``write_json_atomic``, ``save_checkpoint``: the finished temporary file is
  fsynced, renamed over the target with one ``os.replace``, and the directory is fsynced: after a crash or a power
  loss the target holds the old bytes or the new ones, never an empty or partial file.
- ``atomic_dir``: on Linux (glibc >= 2.28, a filesystem with ``renameat2(RENAME_EXCHANGE)``) an existing target is
  exchanged with the finished, fsynced temporary directory in one step: the target path never goes missing.
  Elsewhere: two renames (old output away to ``.<name>.old``, new one in), with a short window where the target is
  missing; a crash inside it leaves ``.<name>.old``, which the next ``atomic_dir`` of that target restores first.
  Either way only one writer of a target at a time.
- temporaries are named ``.<name>.<pid>.<random>.tmp``; each write removes the temporaries of its target whose
  writer process is gone (no such pid on this machine, or this process's pid but not its own live temporary;
  unnamed ones from older versions once they are an hour old). A pid is judged on this machine only: processes on
  other machines must not write the same target at the same time.
- new files get ``0o666 & ~umask``, new directories ``0o777 & ~umask``: the kernel applies the umask when it creates
  them, so nothing reads or changes the process-wide umask.
- ``save_checkpoint`` keeps the checkpoint it replaces (when it is a whole one) as ``<name>.prev``, the target never
  missing meanwhile; ``load_checkpoint`` falls back to it, with a one-line warning, when ``<name>`` cannot be read.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from image_emotion.errors import ImageEmotionError

_log = logging.getLogger(__name__)

STALE_UNNAMED_TEMP_S = 3600  # a temporary without a writer pid (older versions' names) is removed this old
_PID_TEMP = re.compile(r"(\d+)\.[0-9a-z_]+")  # the middle of ".<name>.<pid>.<random>.tmp"
_UNNAMED_TEMP = re.compile(r"[0-9a-z_]+")  # the middle of tempfile.mkstemp's ".<name>.<random>.tmp"
_live_temps: set[str] = set()  # names of this process's temporaries in use (registered before they exist)
_live_lock = threading.Lock()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}
_NO_DIR_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


def _fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | Path) -> None:
    """Make the names in directory ``path`` durable (skipped where directories cannot be opened or synced)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_SYNC:
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every regular file and directory under ``root``, children before their directory."""
    for dirpath, _dirs, names in os.walk(root, topdown=False):
        for name in names:
            file = os.path.join(dirpath, name)
            if not os.path.islink(file) and os.path.isfile(file):
                _fsync_file(file)
        _fsync_dir(dirpath)


def _make_parents(directory: Path) -> None:
    """``mkdir -p directory``, the new directories' names made durable too."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    if not missing:
        return
    missing[0].mkdir(parents=True, exist_ok=True)
    for new in reversed(missing):
        _fsync_dir(new.parent)


def _remove(path: str | Path) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            os.unlink(path)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a writer's pid: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process
    try:  # a killed writer not yet reaped by its parent is a zombie: gone as a writer
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] != "Z"


def _is_stale(path: Path, middle: str) -> bool:
    match = _PID_TEMP.fullmatch(middle)
    if match:
        pid = int(match.group(1))
        if pid == os.getpid():  # this process's (or a dead one's that had the same pid): stale unless in use
            with _live_lock:
                return path.name not in _live_temps
        return not _pid_alive(pid)
    if _UNNAMED_TEMP.fullmatch(middle):
        try:
            return time.time() - path.lstat().st_mtime > STALE_UNNAMED_TEMP_S
        except OSError:
            return False
    return False


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temporaries (``.<name>.*.tmp`` beside ``path``) that writers killed mid-write left behind;
    those of live writers stay. Returns the removed paths."""
    path = Path(path)
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    removed = []
    for name in [n for n in names if n.startswith(prefix) and n.endswith(".tmp") and len(n) > len(prefix) + 4]:
        temp = path.with_name(name)
        if _is_stale(temp, name[len(prefix) : -4]):
            _remove(temp)
            removed.append(temp)
    return removed


@contextmanager
def _temporary(path: Path, make: Callable[[Path], None]) -> Iterator[Path]:
    """A new temporary ``.<name>.<pid>.<random>.tmp`` beside ``path``, made by ``make``; removed on exit."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        with _live_lock:
            if tmp.name in _live_temps:
                continue
            _live_temps.add(tmp.name)
        try:
            make(tmp)
            break
        except BaseException as exc:
            with _live_lock:
                _live_temps.discard(tmp.name)
            if not isinstance(exc, FileExistsError):
                raise
    try:
        yield tmp
    finally:
        _remove(tmp)
        with _live_lock:
            _live_temps.discard(tmp.name)


def _new_file(tmp: Path) -> None:
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))


def _new_dir(tmp: Path) -> None:
    os.mkdir(tmp, 0o777)


@contextmanager
def _atomic_file(path: Path, before_replace: Callable[[], None] | None = None) -> Iterator[Path]:
    _make_parents(path.parent)
    remove_stale_temps(path)
    with _temporary(path, _new_file) as tmp:
        yield tmp
        _fsync_file(tmp)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        _fsync_dir(path.parent)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and replaces ``path`` in one rename."""
    with _atomic_file(Path(path)) as tmp:
        yield tmp


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@functools.cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no glibc, or one older than 2.28
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap the entries ``a`` and ``b`` in one step; ``False`` where the system or filesystem cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on success its tree is fsynced and it replaces ``path``
    (exchanged in one step on Linux, so ``path`` never goes missing; see the module's docstring)."""
    path = Path(path)
    _make_parents(path.parent)
    old = path.with_name(f".{path.name}.old")
    if os.path.lexists(old):
        if not os.path.lexists(path):  # a crash between the two renames: the previous output comes back
            os.rename(old, path)
            _fsync_dir(path.parent)
        else:  # a crash after the new output was renamed in
            _remove(old)
    remove_stale_temps(path)
    with _temporary(path, _new_dir) as tmp:
        yield tmp
        _fsync_tree(tmp)
        if not os.path.lexists(path):
            os.replace(tmp, path)
        elif not _exchange(tmp, path):  # no exchange here: old output away, new one in (a crash between: above)
            _remove(old)
            os.replace(path, old)
            _fsync_dir(path.parent)
            os.replace(tmp, path)
        _fsync_dir(path.parent)
        _remove(old)  # after an exchange, tmp holds the old output: removed on leaving the block


class CheckpointError(ImageEmotionError):
    """A checkpoint file that exists but cannot be read."""


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able ``parts`` (config, data identity): a checkpoint resumes only if it matches."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def source_fingerprint(*modules: Any) -> str:
    """A short hash of the source files of ``modules``: a checkpoint made by other code is not resumed."""
    h = hashlib.sha256()
    for module in modules:
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def files_fingerprint(*paths: str | Path) -> str:
    """A short hash of the bytes of files and directory trees (relative names included): the identity of a
    model's files."""
    h = hashlib.sha256()
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            h.update(f"{file.relative_to(path) if path.is_dir() else file.name}\0{file_sha256(file)}\n".encode())
    return h.hexdigest()[:16]


def previous_checkpoint(path: str | Path) -> Path:
    """Where ``save_checkpoint`` keeps the checkpoint that ``path`` held before its last save."""
    path = Path(path)
    return path.with_name(f"{path.name}.prev")


def _keep_previous(path: Path) -> None:
    """Make ``<path>.prev`` the checkpoint at ``path`` (a hard link, replaced atomically); a damaged or missing one
    is not kept (the previous good one stays; with none at ``path`` a ``.prev`` of an earlier run is removed)."""
    prev = previous_checkpoint(path)
    remove_stale_temps(prev)
    if not path.is_file():
        _remove(prev)
        return
    if not zipfile.is_zipfile(path):  # torch.save writes a zip: a truncated or zeroed file has no directory at its end
        return

    def link(tmp: Path) -> None:
        try:
            os.link(path, tmp)
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links
            shutil.copyfile(path, tmp)
            _fsync_file(tmp)

    with _temporary(prev, link) as tmp:
        os.replace(tmp, prev)
        _fsync_dir(prev.parent)


def save_checkpoint(path: str | Path, state: dict[str, Any], *, keep_previous: bool = True) -> None:
    """``torch.save(state)`` to ``path`` atomically and durably (a crash mid-write leaves the previous checkpoint);
    with ``keep_previous`` the checkpoint it replaces stays as ``<path>.prev`` for ``load_checkpoint`` to fall
    back to."""
    import torch

    path = Path(path)
    with _atomic_file(path, before_replace=(lambda: _keep_previous(path)) if keep_previous else None) as tmp:
        torch.save(state, tmp)


def _read_checkpoint(path: Path, map_location: Any) -> tuple[dict[str, Any] | None, str]:
    """The state at ``path`` and ``""``, or ``None`` and why it is unusable."""
    import torch

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        return None, f"cannot be read ({type(exc).__name__})"
    if not isinstance(state, dict):
        return None, "is not one written by image-emotion"
    return state, ""


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any] | None:
    """The state saved at ``path``, ``None`` when there is none; when it cannot be read, the previous checkpoint
    (``<path>.prev``) with a one-line warning; when neither can, a one-line error."""
    path = Path(path)
    if not path.is_file():
        return None
    state, why = _read_checkpoint(path, map_location)
    if state is not None:
        return state
    prev = previous_checkpoint(path)
    if not prev.is_file():
        if why.startswith("cannot"):
            raise CheckpointError(f"{path}: checkpoint {why}; delete it to start this stage afresh")
        raise CheckpointError(f"{path}: not a checkpoint written by image-emotion; delete it to start afresh")
    state, why_prev = _read_checkpoint(prev, map_location)
    if state is None:
        raise CheckpointError(
            f"{path}: checkpoint {why}, and {prev.name} beside it {why_prev}; delete both to start this stage afresh"
        )
    _log.warning("%s: checkpoint %s; loading the previous one, %s", path, why, prev)
    return state
