"""``ketch help`` (and ``ketch --help``) laid out as ``multipass help`` prints it.

Multipass's general help is Qt's usage text edited by its argument parser
(src/client/cli/argparser.cpp, ``generalHelpText``): a usage line, the
description, the options, then "Available commands:", one line per command
sorted by name, each ``"  {name:<width}  {short help}"`` with ``width`` the
longest name.  ketch prints the same layout, with its own verbs (image,
doctor, daemon, completion, ...) among Multipass's; the list comes from
:data:`ketch.cli.parser.HELP`, so a verb added there is listed here.
"""

from __future__ import annotations

from collections.abc import Mapping

DESCRIPTION = (
    "Create, control and connect to Linux instances.\n"
    "\n"
    "This is a command line utility for ketch, a lightweight\n"
    "manager of QEMU VMs from cloud images, Multipass-compatible."
)
OPTIONS = (
    ("-h, --help", "Display this help"),
    ("-V, --version", "Show version details"),
)


def general_help(commands: Mapping[str, str], prog: str = "ketch") -> str:
    """The whole text, ending in a newline."""
    lines = [f"Usage: {prog} [options] <command>", DESCRIPTION, "", "Options:"]
    width = max(len(flag) for flag, _ in OPTIONS)
    lines += [f"  {flag:<{width}}  {text}" for flag, text in OPTIONS]
    lines += ["", "Available commands:"]
    width = max(len(name) for name in commands)
    lines += [f"  {name:<{width}}  {commands[name]}" for name in sorted(commands)]
    return "\n".join(lines) + "\n"
