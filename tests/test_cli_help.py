"""Every sub-command's help renders (argparse expands ``%`` in help texts: a bare one breaks ``--help``)."""

from __future__ import annotations

import argparse

import pytest

from image_emotion.cli import build_parser, main

COMMANDS = sorted(next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_renders(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"] if command is None else [command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: image-emotion")
