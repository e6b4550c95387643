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


def test_every_option_of_every_command_says_what_it_does():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {c.dest: c.help for c in commands._choices_actions}
    silent = [
        f"{name} {action.option_strings[0]}"
        for name, sub in commands.choices.items()
        for action in sub._actions
        if action.option_strings and action.dest != "help" and not action.help
    ]
    assert silent == []
    assert [name for name, sub in commands.choices.items() if not (sub.description or summaries.get(name))] == []
