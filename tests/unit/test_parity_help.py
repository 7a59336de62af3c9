"""``ketch help`` laid out as ``multipass help`` (issue 17).

Multipass's general help (src/client/cli/argparser.cpp, ``generalHelpText`` and
``format_short_help_for``): "Usage: multipass [options] <command>", the
description, "Options:", then "Available commands:" with one
``"  {name:<longest}  {short help}"`` line per command, sorted by name.
"""

from __future__ import annotations

import re

import pytest

from ketch.cli import main as cli
from ketch.cli.helptext import general_help
from ketch.cli.parser import HELP

# Multipass 1.16's short helps (src/client/cli/cmd/*.cpp, short_help()) for the verbs
# ketch shares, where ketch uses Multipass's words; launch says "an instance", not
# "an Ubuntu instance" (ketch launches other Linux images too).
MULTIPASS_WORDS = {
    "clone": "Clone an instance",
    "delete": "Delete instances and snapshots",
    "exec": "Run a command on an instance",
    "find": "Display available images to create instances from",
    "get": "Get a configuration setting",
    "help": "Display help about a command",
    "info": "Display information about instances or snapshots",
    "list": "List all available instances or snapshots",
    "purge": "Purge all deleted instances permanently",
    "recover": "Recover deleted instances",
    "restart": "Restart instances",
    "restore": "Restore an instance from a snapshot",
    "set": "Set a configuration setting",
    "shell": "Open a shell on a running instance",
    "start": "Start instances",
    "stop": "Stop running instances",
    "suspend": "Suspend running instances",
    "transfer": "Transfer files between the host and instances",
    "version": "Show version details",
}


def commands_of(text: str) -> list[tuple[str, str]]:
    section = text.split("\nAvailable commands:\n", 1)[1]
    return [
        (m.group(1), m.group(2))
        for m in (re.fullmatch(r"  (\S+) +(\S.*)", line) for line in section.splitlines())
        if m
    ]


def test_layout_is_multipass_general_help() -> None:
    text = general_help(HELP)
    lines = text.splitlines()
    assert lines[0] == "Usage: ketch [options] <command>"
    assert "\nOptions:\n  -h, --help     Display this help\n" in text
    assert text.endswith("\n") and "\n\nAvailable commands:\n" in text
    listed = commands_of(text)
    assert [n for n, _ in listed] == sorted(HELP)  # every verb, sorted, no aliases
    width = max(len(n) for n in HELP)
    section = text.split("\nAvailable commands:\n", 1)[1].splitlines()
    for (name, words), line in zip(listed, section, strict=True):
        assert line == f"  {name:<{width}}  {words}"  # Multipass's column rule


@pytest.mark.parametrize(("verb", "words"), sorted(MULTIPASS_WORDS.items()))
def test_shared_verbs_use_multipass_short_help(verb: str, words: str) -> None:
    assert HELP[verb] == words


@pytest.mark.parametrize("argv", [["help"], ["--help"], ["-h"]])
def test_help_and_dash_dash_help_print_the_same(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == general_help(HELP)


def test_help_of_a_verb_is_that_verbs_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["help", "restore"])
    assert done.value.code == 0
    assert "usage: ketch restore" in capsys.readouterr().out


def test_no_verb_prints_the_general_help_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 1
    assert capsys.readouterr().err == general_help(HELP)
