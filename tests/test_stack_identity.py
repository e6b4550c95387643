"""The tracking stack knows its own server, refuses a port another process holds, and keeps a user's S3 credentials
(``tracking/stack.py``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import urllib.request

import psutil
import pytest

from image_emotion.tracking.stack import (
    Credentials,
    StackError,
    StackState,
    free_port,
    is_our_server,
    is_running,
    server_env,
    start_server,
)

HEALTHY = textwrap.dedent(
    """
    import http.server, sys
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
    """
)


def _state(pid: int, port: int) -> StackState:
    return StackState("/nowhere", f"http://127.0.0.1:{port}", "postgresql://x", "http://s3", "s3://b", pid, None, port)


@pytest.fixture
def impostor():
    """Another process answering ``/health`` on a port, like mlflow server does; (process, port)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", HEALTHY, str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the stand-in server did not start"
                time.sleep(0.1)
        yield process, port
    finally:
        process.kill()
        process.wait()


def test_another_process_answering_health_on_the_port_is_not_the_stacks_server(impostor):
    process, port = impostor
    assert not is_running(_state(process.pid, port))  # recorded pid, but not an mlflow server on that port
    assert not is_running(_state(2**22 + 7, port))  # a pid that runs nothing
    # a recorded pid whose command line reads `mlflow server ... <port>` but that does not listen there
    lookalike = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "mlflow", "server", str(port)])
    try:
        deadline = time.monotonic() + 10
        while "mlflow" not in psutil.Process(lookalike.pid).cmdline():  # empty for a moment after exec
            assert time.monotonic() < deadline, "the look-alike did not start"
            time.sleep(0.05)
        assert not is_our_server(_state(lookalike.pid, port))  # no HTTP: not a time-out passing for a refusal
    finally:
        lookalike.kill()
        lookalike.wait()


def test_a_port_another_process_holds_is_refused_before_the_server_starts(impostor, tmp_path):
    process, port = impostor
    with pytest.raises(StackError, match=f"port {port} on 127.0.0.1 is taken by pid {process.pid}"):
        start_server(tmp_path, "postgresql://x", "s3://b", "http://s3", port, "127.0.0.1", Credentials.generate())
    assert not (tmp_path / "mlflow-server.log").exists()  # no server was started


def test_a_users_s3_endpoint_keeps_the_users_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "the-users-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-users-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "the-users-session")
    credentials = Credentials.generate()
    theirs = server_env("https://s3.example.com", credentials, own_s3=False)
    assert (theirs["AWS_ACCESS_KEY_ID"], theirs["AWS_SECRET_ACCESS_KEY"]) == ("the-users-key", "the-users-secret")
    assert theirs["AWS_SESSION_TOKEN"] == "the-users-session"
    assert theirs["MLFLOW_S3_ENDPOINT_URL"] == "https://s3.example.com"
    ours = server_env("http://127.0.0.1:9000", credentials)  # the bundled endpoint: the stack's own keys
    assert ours["AWS_ACCESS_KEY_ID"] == credentials.s3_access_key_id != "testing"
    assert ours["AWS_SECRET_ACCESS_KEY"] == credentials.s3_secret_access_key
    assert "AWS_SESSION_TOKEN" not in ours  # the user's session goes to no stand-in
    assert theirs["PGPASSWORD"] == ours["PGPASSWORD"] == credentials.postgres_password
