"""Every flag of every command says what it does and what it is when not given."""

import argparse

import pytest

from aioreconcile.cli import _parser


def _commands(
    parser: argparse.ArgumentParser, prefix: str = "aioreconcile"
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _commands(child, f"{prefix} {name}")
    return found


def _flags() -> list[tuple[str, argparse.Action]]:
    return [
        (command, action)
        for command, parser in _commands(_parser())
        for action in parser._actions
        if not isinstance(
            action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction
        )
    ]


@pytest.mark.parametrize(
    ("command", "action"),
    _flags(),
    ids=[f"{c} {a.option_strings[-1] if a.option_strings else a.dest}" for c, a in _flags()],
)
def test_every_flag_has_help_with_its_default(command: str, action: argparse.Action) -> None:
    assert action.help, f"{command} {action.dest}: no help text"
    takes_value = action.nargs != 0
    if action.option_strings and takes_value and not action.required:
        assert "default" in action.help, f"{command} {action.option_strings}: no default named"


def test_help_shows_the_actual_default_values() -> None:
    run = dict(_commands(_parser()))["aioreconcile run"]
    text = " ".join(run.format_help().split())
    for shown in ("(default: 16)", "(default: info)", "(default: default)"):
        assert shown in text, f"{shown!r} not in `aioreconcile run --help`:\n{text}"
