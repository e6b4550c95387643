"""Durable outputs: atomic writes are fsynced (file, then its directory), follow the umask, leave no temporaries of
killed writers, ``atomic_dir`` never exposes a missing output and undoes a crash between its renames, and a
damaged checkpoint falls back to the previous one."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from image_emotion import files
from image_emotion.files import (
    CheckpointError,
    atomic_dir,
    atomic_path,
    load_checkpoint,
    previous_checkpoint,
    remove_stale_temps,
    save_checkpoint,
    write_json_atomic,
    write_text_atomic,
)

LINUX = sys.platform.startswith("linux")


def _temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".old"))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_new_files_and_directories_follow_the_umask(tmp_path, umask):
    (tmp_path / "replaced.txt").write_text("old")
    os.chmod(tmp_path / "replaced.txt", 0o600)
    before = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.txt", "a")
        write_text_atomic(tmp_path / "replaced.txt", "new")
        write_json_atomic(tmp_path / "new/dir/b.json", {"b": 1})
        with atomic_path(tmp_path / "c.bin") as tmp:
            tmp.write_bytes(b"c")
        save_checkpoint(tmp_path / "d.pt", {"d": torch.zeros(2)})
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "inner.txt").write_text("x")
    finally:
        os.umask(before)
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    for name in ("a.txt", "replaced.txt", "new/dir/b.json", "c.bin", "d.pt", "out/inner.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == file_mode, name
    for name in ("new", "new/dir", "out"):
        assert (tmp_path / name).stat().st_mode & 0o777 == dir_mode, name


@pytest.fixture
def synced(monkeypatch):
    """Record each ``os.fsync``: the synced path (and, for files, their size then), and call the real one."""
    real = os.fsync
    calls: list[tuple[str, int | None]] = []

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        st = os.fstat(fd)
        calls.append((path, None if os.path.isdir(path) else st.st_size))
        return real(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the synced files")
    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_atomic_writes_fsync_the_file_rename_it_once_then_fsync_its_directory(tmp_path, synced, monkeypatch):
    real_replace = os.replace

    def replace(src, dst):
        synced.append(("replace", Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    write_json_atomic(tmp_path / "metrics.json", {"accuracy": 0.5})
    size = (tmp_path / "metrics.json").stat().st_size
    file_syncs = [i for i, (p, n) in enumerate(synced) if Path(p).name.startswith(".metrics.json.")]
    assert file_syncs, f"the temporary file was never fsynced: {synced}"
    assert synced[file_syncs[-1]][1] == size, "fsynced before it was fully written"
    [rename] = [i for i, call in enumerate(synced) if call[0] == "replace"]  # one rename
    assert file_syncs[-1] < rename and synced[rename] == ("replace", "metrics.json")
    assert synced[rename + 1 :] == [(str(tmp_path), None)], f"the directory was not fsynced after the rename: {synced}"

    synced.clear()
    save_checkpoint(tmp_path / "last.pt", {"w": torch.ones(100)})
    size = (tmp_path / "last.pt").stat().st_size
    assert any(Path(p).name.startswith(".last.pt.") and n == size for p, n in synced), synced
    assert synced[-2:] == [("replace", "last.pt"), (str(tmp_path), None)]


def test_atomic_dir_fsyncs_its_tree_and_the_parent(tmp_path, synced):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub/a.bin").write_bytes(b"a" * 10)
        (tmp / "b.bin").write_bytes(b"b" * 20)
    names = [(Path(p).name, s) for p, s in synced]
    assert ("a.bin", 10) in names and ("b.bin", 20) in names, synced
    assert ("sub", None) in names, synced
    assert synced[-1] == (str(tmp_path), None), "the parent was not synced last (after the rename)"
    assert (tmp_path / "out/sub/a.bin").read_bytes() == b"a" * 10


def _exchange_works(directory: Path) -> bool:
    a, b = directory / "xa", directory / "xb"
    a.mkdir()
    b.mkdir()
    (a / "f").touch()
    try:
        return files._exchange(a, b) and (b / "f").exists()
    finally:
        files._remove(a)
        files._remove(b)


POLLER = textwrap.dedent(
    """
    import os, sys
    path, stop = sys.argv[1], sys.argv[2]
    exists, isfile = os.path.exists, os.path.isfile
    polls = misses = 0
    print("ready", flush=True)
    while True:
        for _ in range(1000):
            polls += 1
            if not exists(path):
                misses += 1
        if isfile(stop):
            break
    print(polls, misses, flush=True)
    """
)


@pytest.mark.skipif(not LINUX, reason="the exchange is Linux's renameat2")
def test_atomic_dir_never_exposes_a_missing_output(tmp_path):
    if not _exchange_works(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here (the two-rename fallback has a window)")
    out, stop = tmp_path / "out", tmp_path / "stop"
    with atomic_dir(out) as tmp:
        (tmp / "n.txt").write_text("0")
    poller = subprocess.Popen(
        [sys.executable, "-c", POLLER, str(out), str(stop)], stdout=subprocess.PIPE, text=True
    )  # a process, not a thread: it polls while the renames run, not only between them
    try:
        assert poller.stdout.readline().strip() == "ready"
        for n in range(1, 301):
            with atomic_dir(out) as tmp:
                (tmp / "n.txt").write_text(str(n))
                (tmp / "more").mkdir()
    finally:
        stop.touch()
        polls, misses = map(int, poller.communicate(timeout=60)[0].split())
    assert polls > 10_000, "the poller did not run alongside the replacements"
    assert misses == 0, f"{out} was missing in {misses} of {polls} looks"
    assert (out / "n.txt").read_text() == "300"
    assert _temps(tmp_path) == []


def test_atomic_dir_restores_the_old_output_after_a_crash_between_its_renames(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "v.txt").write_text("first")
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)  # the two-rename scheme of other systems
    real_replace, renames = os.replace, []

    def crash_on_second_rename(src, dst):
        renames.append(dst)
        if len(renames) == 2:
            raise KeyboardInterrupt("killed between the renames")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        (tmp / "v.txt").write_text("second")
    monkeypatch.setattr(os, "replace", real_replace)
    assert not out.exists() and (tmp_path / ".out.old/v.txt").read_text() == "first"  # the crash's state

    with pytest.raises(RuntimeError), atomic_dir(out):  # the next writer restores it on entry, even if it fails
        raise RuntimeError("this writer fails too")
    assert (out / "v.txt").read_text() == "first"
    assert _temps(tmp_path) == []

    with atomic_dir(out) as tmp:  # the fallback still replaces a whole directory
        (tmp / "v.txt").write_text("third")
    assert sorted(p.name for p in out.iterdir()) == ["v.txt"] and (out / "v.txt").read_text() == "third"
    assert _temps(tmp_path) == []


def test_a_leftover_old_output_beside_a_new_one_is_removed(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out/new.txt").write_text("new")
    (tmp_path / ".out.old").mkdir()
    (tmp_path / ".out.old/old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out"):
        raise RuntimeError
    assert (tmp_path / "out/new.txt").read_text() == "new" and _temps(tmp_path) == []


def test_temporaries_of_dead_writers_go_and_those_of_live_ones_stay(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            f".m.json.{dead_pid}.ab12cd34.tmp": False,  # writer gone
            f".m.json.{live.pid}.ab12cd34.tmp": True,  # writer still writing
            f".m.json.{os.getpid()}.0000aaaa.tmp": False,  # this pid, not a temporary in use: an earlier process's
            ".m.json.k3j_x9ab.tmp": True,  # no pid (older versions' names), recent
            ".m.json.old0name.tmp": False,  # no pid, two hours old
            f".other.json.{dead_pid}.ab12cd34.tmp": True,  # another target's
            f".m.json.prev.{dead_pid}.ab12cd34.tmp": True,  # m.json.prev's: cleaned when that one is written
            "m.json.tmp": True,
        }
        for name in names:
            (tmp_path / name).write_text("partial")
        os.utime(tmp_path / ".m.json.old0name.tmp", (time.time() - 7200,) * 2)
        (tmp_path / f".m.json.{dead_pid}.dir00000.tmp").mkdir()  # a dead atomic_dir's
        (tmp_path / f".m.json.{dead_pid}.dir00000.tmp/f").write_text("x")
        names[f".m.json.{dead_pid}.dir00000.tmp"] = False
        write_json_atomic(tmp_path / "m.json", {"ok": True})
        kept = {p.name for p in tmp_path.iterdir()} - {"m.json"}
        assert kept == {name for name, stays in names.items() if stays}
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temps(tmp_path / "m.json") == [tmp_path / f".m.json.{live.pid}.ab12cd34.tmp"]


WRITER = textwrap.dedent(
    """
    import sys, torch
    from image_emotion.files import save_checkpoint
    w = torch.empty(6_000_000)
    step = 0
    while True:
        step += 1
        w.fill_(float(step))
        save_checkpoint(sys.argv[1], {"step": step, "w": w})
        print(step, flush=True)
    """
)


def _kill_mid_save(path: Path) -> list[Path]:
    """Run a checkpoint writer in a loop, SIGKILL it at a random moment while one of its saves is under way;
    returns the temporaries it left."""
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "1", "the writer died before its first checkpoint"
            time.sleep(random.uniform(0, 0.5))
            deadline = time.time() + 30
            while time.time() < deadline and not list(path.parent.glob(f".{path.name}.*.tmp")):
                pass
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        left = list(path.parent.glob(f".{path.name}.*.tmp"))
        if left:
            return left
    pytest.fail("could not kill the writer mid-save")


def _whole(state) -> bool:
    return bool((state["w"] == float(state["step"])).all())


def test_a_writer_killed_mid_save_leaves_a_whole_checkpoint_and_its_temporary_is_removed(tmp_path):
    path = tmp_path / "ckpt/last.pt"
    path.parent.mkdir()
    assert _kill_mid_save(path)  # the dead writer's partial file
    killed = load_checkpoint(path)
    assert _whole(killed)

    save_checkpoint(path, {"step": 0, "w": torch.zeros(3)})
    left = sorted(p.name for p in path.parent.iterdir())
    assert left == ["last.pt", "last.pt.prev"], left  # nothing of the killed writer's is left
    assert load_checkpoint(path)["step"] == 0
    assert load_checkpoint(previous_checkpoint(path))["step"] == killed["step"]


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    path = tmp_path / "last.pt"
    assert load_checkpoint(path) is None
    save_checkpoint(path, {"step": 1, "w": torch.full((1000,), 1.0)})
    assert not previous_checkpoint(path).exists()
    save_checkpoint(path, {"step": 2, "w": torch.full((1000,), 2.0)})
    assert load_checkpoint(previous_checkpoint(path))["step"] == 1

    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated, as after a crash of a non-atomic copy
    with caplog.at_level(logging.WARNING, logger="image_emotion.files"):
        state = load_checkpoint(path)
    assert state["step"] == 1 and _whole(state)
    [record] = [r for r in caplog.records if r.name == "image_emotion.files"]
    message = record.getMessage()
    assert record.levelno == logging.WARNING and "\n" not in message
    assert str(path) in message and "last.pt.prev" in message
    shown = subprocess.run(
        [sys.executable, "-c", f"from image_emotion.files import load_checkpoint; load_checkpoint({str(path)!r})"],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0 and shown.stderr.strip() == message  # one line on stderr, logging unconfigured

    save_checkpoint(path, {"step": 2, "w": torch.full((1000,), 2.0)})  # the resumed run saves again
    assert load_checkpoint(previous_checkpoint(path))["step"] == 1  # the damaged file did not replace the good one
    assert load_checkpoint(path)["step"] == 2

    path.write_bytes(b"\x00" * 100)
    previous_checkpoint(path).write_bytes(data[:100])
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{path}: checkpoint cannot be read")
    assert "last.pt.prev" in message and "delete both" in message

    path.write_bytes(b"junk")  # without a previous one, the error names the one file
    previous_checkpoint(path).unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint cannot be read \(.*\); delete it to start"):
        load_checkpoint(path)


def test_a_deleted_checkpoint_starts_afresh_and_its_stale_previous_one_goes(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2})
    path.unlink()  # what the error message tells the user to do
    assert load_checkpoint(path) is None  # not the .prev of the deleted run
    save_checkpoint(path, {"step": 1})
    assert not previous_checkpoint(path).exists()
    save_checkpoint(path, {"step": 2}, keep_previous=False)
    assert not previous_checkpoint(path).exists()


def test_text_and_json_writes_replace_whole_files(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [1, 2], "b": 1}
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "m.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [1, 2], "b": 1}
    assert _temps(tmp_path) == []
