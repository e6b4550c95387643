"""The tracking stack knows its own server and keeps a user's S3 credentials (``tracking/stack.py``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import urllib.request

from image_emotion.tracking.stack import S3_CREDENTIALS, StackState, free_port, is_running, server_env

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


def test_another_process_answering_health_on_the_port_is_not_the_stacks_server():
    port = free_port()
    impostor = subprocess.Popen([sys.executable, "-c", HEALTHY, str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:  # it answers /health like mlflow server does
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the stand-in server did not start"
                time.sleep(0.1)
        assert not is_running(_state(impostor.pid, port))  # recorded pid, but not an mlflow server on that port
        assert not is_running(_state(2**22 + 7, port))  # a pid that runs nothing
    finally:
        impostor.kill()
        impostor.wait()


def test_a_users_s3_endpoint_keeps_the_users_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "the-users-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-users-secret")
    theirs = server_env("https://s3.example.com", own_s3=False)
    assert (theirs["AWS_ACCESS_KEY_ID"], theirs["AWS_SECRET_ACCESS_KEY"]) == ("the-users-key", "the-users-secret")
    assert theirs["MLFLOW_S3_ENDPOINT_URL"] == "https://s3.example.com"
    ours = server_env("http://127.0.0.1:9000")  # the bundled endpoint: its own keys
    assert ours["AWS_ACCESS_KEY_ID"] == S3_CREDENTIALS["AWS_ACCESS_KEY_ID"]
