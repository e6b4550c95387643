"""One error style for every command: one line on stderr, an exit status that says what kind of failure, the
traceback only with --debug (or IMAGE_EMOTION_DEBUG=1)."""

import subprocess
import sys

import pytest

from image_emotion import cli
from image_emotion.errors import ConfigError


def _run_failing(monkeypatch, capsys, exc: BaseException, *flags: str) -> tuple[int, str]:
    """``image-emotion [flags] summary`` with the sub-command raising ``exc``: (exit status, stderr)."""

    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "_summary", fail)  # bound when main() builds its parser
    status = cli.main([*flags, "summary"])
    return status, capsys.readouterr().err


def test_a_setup_error_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    status, err = _run_failing(
        monkeypatch, capsys, ConfigError("params.yaml: unknown key 'lamda'; did you mean 'lambda'?")
    )
    assert (status, err) == (2, "error: params.yaml: unknown key 'lamda'; did you mean 'lambda'?\n")


def test_an_os_error_names_its_file_and_reason_and_is_exit_2(monkeypatch, capsys):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    missing = FileNotFoundError(2, "No such file or directory", "data/prepared/main/manifest.csv")
    status, err = _run_failing(monkeypatch, capsys, missing)
    assert (status, err) == (2, "error: data/prepared/main/manifest.csv: No such file or directory\n")
    status, err = _run_failing(monkeypatch, capsys, PermissionError(13, "Permission denied", "a", None, "b"))
    assert (status, err) == (2, "error: a -> b: Permission denied\n")


def test_a_bug_is_exit_3_with_its_type_and_the_way_to_the_traceback(monkeypatch, capsys):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    status, err = _run_failing(monkeypatch, capsys, KeyError("head"))
    assert status == 3 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: unexpected KeyError: 'head' (a bug: run again with --debug")


@pytest.mark.parametrize("switch", ["flag", "env"])
def test_debug_adds_the_traceback_and_keeps_the_line_and_status(monkeypatch, capsys, switch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    if switch == "env":
        monkeypatch.setenv(cli.DEBUG_ENV, "1")
    status, err = _run_failing(
        monkeypatch, capsys, ValueError("shapes (3,) and (4,)"), *(["--debug"] * (switch == "flag"))
    )
    assert status == 3
    assert err.startswith("Traceback (most recent call last):") and "raise exc" in err
    assert err.splitlines()[-1].startswith("error: unexpected ValueError: shapes (3,) and (4,)")


def test_usage_errors_are_argparses_exit_2_and_every_status_is_documented(repo_root):
    done = subprocess.run(
        [sys.executable, "-m", "image_emotion.cli", "predict", "photo.png", "--no-such-option"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "unrecognized arguments: --no-such-option" in done.stderr
    page = (repo_root / "docs/pipeline.md").read_text()
    section = page[page.index("## Errors and exit codes") :]
    for status in cli.EXIT_CODES:
        assert f"| {status} |" in section, status
