"""``mlflow models serve`` of a registered model on a free loopback port, started and stopped from Python (the
serving test and ``benchmarks/serving.py`` use it).

``ModelServer(model_uri, tracking_uri, log_path)`` starts the server in its own process group with the tracking
store and this environment's ``mlflow`` (``--env-manager local``), waits until ``GET /ping`` answers 200, and
raises ``ModelServerError`` with the tail of the server's output when it exits or does not answer in time.
``stop()`` (or leaving the ``with`` block) terminates the whole group (the CLI and its uvicorn child), killing
what lingers after 10 s.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from image_emotion.errors import ImageEmotionError


class ModelServerError(ImageEmotionError):
    """The model server exited or did not answer ``/ping`` in time."""


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ModelServer:
    """``mlflow models serve -m model_uri`` on ``url`` (``http://127.0.0.1:<port>``), output in ``log_path``."""

    def __init__(
        self,
        model_uri: str,
        tracking_uri: str,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        start_timeout_s: float = 120,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        self._log = self.log_path.open("wb")
        bin_dir = Path(sys.executable).parent  # mlflow and the uvicorn it runs come from this environment
        mlflow_cli = bin_dir / "mlflow"
        self.proc = subprocess.Popen(
            [
                str(mlflow_cli) if mlflow_cli.exists() else "mlflow",
                *("models", "serve", "-m", model_uri, "--env-manager", "local"),
                *("--host", "127.0.0.1", "--port", str(self.port)),
            ],
            env={
                **os.environ,
                "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                "MLFLOW_TRACKING_URI": tracking_uri,
                "MLFLOW_DISABLE_TELEMETRY": "true",
                **(extra_env or {}),
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait(start_timeout_s)
        except BaseException:  # Ctrl-C or a failed start: no server left behind
            self.stop()
            raise

    def _wait(self, start_timeout_s: float) -> None:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            exited = self.proc.poll() is not None
            if exited or time.monotonic() > deadline:
                self._log.flush()
                tail = self.log_path.read_text(errors="replace")[-4000:]
                state = f"exited with status {self.proc.returncode}" if exited else "did not answer /ping in time"
                raise ModelServerError(f"mlflow models serve {state} (see {self.log_path}):\n{tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Terminate the server's process group, killing what lingers."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                self.proc.poll()  # reap the leader, so a finished group reads as gone
                try:
                    os.killpg(self.proc.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                continue  # still there after 10 s: SIGKILL
            break
        self._log.close()

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
