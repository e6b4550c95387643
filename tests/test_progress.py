"""Long loops show a progress bar (rate and ETA) on a terminal and nothing when stderr is a pipe or a file."""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

LOOP = """
import time
from image_emotion.training.progress import progress
for _ in progress(range(3), "λ sweep (11 heads)", mininterval=0):
    time.sleep(0.05)
for _ in progress(range(3), "metric network", show=False):
    pass
print("done", flush=True)
"""


def _run(stderr) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOOP], stdout=subprocess.PIPE, stderr=stderr, timeout=60)


def test_a_terminal_sees_the_bar_with_its_rate_a_pipe_sees_nothing():
    piped = _run(subprocess.PIPE)
    assert piped.stdout == b"done\n" and piped.stderr == b""  # CI logs, kfp pods, dvc repro redirected
    reader, writer = pty.openpty()
    fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 columns wide
    try:
        on_terminal = _run(writer)
        os.close(writer)
        writer = -1
        shown = b""
        while True:
            try:
                chunk = os.read(reader, 65536)
            except OSError:  # the terminal's other end is closed: everything was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(reader)
        if writer >= 0:
            os.close(writer)
    text = shown.decode(errors="replace")
    assert on_terminal.stdout == b"done\n"
    assert "λ sweep (11 heads)" in text and "3/3" in text and "epoch/s" in text  # the count and the rate
    assert "metric network" not in text  # show=False (another rank) draws nothing
