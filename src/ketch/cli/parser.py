"""The command line's argparse: the verbs' parsers, exit 1 on bad usage, no ``shutil``.

Each verb's handler is named (:class:`Command`: module and function) and its
module imported only when the verb runs, and ``build_parser(only=VERB)``
builds that verb's sub-parser alone: ``ketch list`` loads neither the other
verbs' code nor their parsers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ketch import __version__
from ketch.errors import EXIT_USAGE
from ketch.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, NoReturn

Handler = Callable[[argparse.Namespace], int]

FORMATS = ("table", "json", "csv", "yaml")  # --format of list, info, find, ...

# Each verb's help line, by the module declaring its arguments (``ketch.cli.args_<area>``).
AREAS: dict[str, dict[str, str]] = {
    "instances": {
        "launch": "Create and start an instance",
        "list": "List all available instances or snapshots",
        "info": "Display information about instances or snapshots",
        "start": "Start instances",
        "suspend": "Suspend running instances",
        "restart": "Restart instances",
        "stop": "Stop running instances",
        "delete": "Delete instances and snapshots",
        "recover": "Recover deleted instances",
        "purge": "Purge all deleted instances permanently",
        "snapshot": "Take a snapshot of an instance",
        "restore": "Restore an instance from a snapshot",
        "clone": "Clone an instance",
    },
    "guest": {
        "mount": "Mount a local directory in the instance",
        "umount": "Unmount a directory from an instance",
        "exec": "Run a command on an instance",
        "shell": "Open a shell on a running instance",
        "transfer": "Transfer files between the host and instances",
        "alias": "Create an alias",
        "aliases": "List available aliases",
        "unalias": "Remove aliases",
        "prefer": "Switch the current alias context",
        "forward": "Add (or --remove) an explicit port forward to an instance",
        "forwards": "List the port forwards of instances, automatic and explicit",
    },
    "system": {
        "find": "Display available images to create instances from",
        "get": "Get a configuration setting",
        "set": "Set a configuration setting",
        "image": "Build, list and prune cached images",
        "doctor": "Find, explain and (with --fix) repair inconsistent instances",
        "version": "Show version details",
        "networks": "List available network interfaces",
        "help": "Display help about a command",
        "wait-ready": "Wait for ketchd (or an instance) to be ready",
        "daemon": "Run ketchd in the foreground",
        "completion": "Print a shell completion script (bash or zsh)",
    },
    "hosts": {
        "host": "Add, list and remove the hosts instances run on (libvirt, local or over ssh)",
    },
    "remote": {
        "authenticate": "Authenticate this client with a remote ketchd (KETCH_SERVER_ADDRESS)",
    },
    "web": {
        "watch": "Print ketchd's live events: state changes, operations, inconsistencies",
        "dashboard": "Open the web dashboard on 127.0.0.1 and print its one-time URL",
    },
}
HELP = {verb: text for verbs in AREAS.values() for verb, text in verbs.items()}
AREA = {verb: area for area, verbs in AREAS.items() for verb in verbs}
ALIASES = {  # alias: verb
    "ls": "list",
    "sh": "shell",
    "connect": "shell",
    "copy-files": "transfer",
    "unmount": "umount",
    "auth": "authenticate",
}

# Verbs (and aliases) whose sub-parser can be built alone.
VERBS = (set(HELP) | set(ALIASES)) - {"help", "completion"}


def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` says it, without importing shutil.

    argparse makes a help formatter for every parser and argument, and its
    default asks shutil, whose import (with bz2, lzma, zlib behind it) costs
    every ``ketch`` command about 2.4 ms.
    """
    import os

    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0 and sys.__stdout__ is not None:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class Formatter(argparse.HelpFormatter):
    """argparse's help formatter, its width found without shutil."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(
            prog, indent_increment, max_help_position, width if width else _columns() - 2
        )


class Parser(argparse.ArgumentParser):
    """argparse that exits 1 on bad usage, as Multipass does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


class Command:
    """A verb's handler by name: ``ketch.cli.<module>.<function>``, imported when it runs.

    (Importing every verb's module to build the parser would put all of them
    on the hot path of ``ketch list``.)
    """

    __slots__ = ("function", "module")

    def __init__(self, module: str, function: str) -> None:
        self.module = module
        self.function = function

    def resolve(self) -> Handler:
        """The handler itself (its module imported)."""
        module = __import__(f"ketch.cli.{self.module}", fromlist=[self.function])
        handler: Handler = getattr(module, self.function)
        return handler

    def __call__(self, args: argparse.Namespace) -> int:
        return self.resolve()(args)

    def __repr__(self) -> str:
        return f"Command({self.module!r}, {self.function!r})"


def positive_seconds(text: str) -> int:
    """A ``--timeout`` value: a positive whole number of seconds, as Multipass takes it."""
    if not text.strip().isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError("--timeout value has to be a positive integer")
    return int(text)


class _Skip:
    """Stands in for the sub-parsers a run does not need (they cost ~0.5 ms each)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


def no_map(sp: argparse.ArgumentParser) -> None:
    """``-n/--no-map-working-directory``, as ``exec`` and ``alias`` take it."""
    sp.add_argument(
        "-n",
        "--no-map-working-directory",
        dest="no_map",
        action="store_true",
        help="do not map the host's working directory to a mounted path",
    )


class Verbs:
    """What a verbs' declaration module gets: ``cmd`` for a verb's sub-parser, shared options.

    With ``only`` set, ``cmd`` of any other verb returns a stand-in that ignores
    everything, so the hot path builds one sub-parser.
    """

    def __init__(self, sub: Any, only: str | None) -> None:
        self._sub = sub
        self._only = only

    def cmd(self, name: str, module: str) -> Parser:
        """The verb's sub-parser; its handler is ``cmd_<name>`` in ``ketch.cli.<module>``."""
        if self._only is not None and ALIASES.get(self._only, self._only) != name:
            return _Skip()  # type: ignore[return-value]
        aliases = [alias for alias, verb in ALIASES.items() if verb == name]
        sp: Parser = self._sub.add_parser(
            name, help=HELP[name], description=HELP[name], aliases=aliases
        )
        sp.set_defaults(func=Command(module, "cmd_" + name.replace("-", "_")))
        return sp

    @staticmethod
    def fmt(sp: argparse.ArgumentParser) -> None:
        """``--format table|json|csv|yaml``."""
        sp.add_argument("--format", choices=FORMATS, default="table", help="output format")

    @staticmethod
    def timeout(sp: argparse.ArgumentParser) -> None:
        """``--timeout SECONDS``, as Multipass's start, restart and shell take it."""
        sp.add_argument(
            "--timeout",
            type=positive_seconds,
            metavar="SECONDS",
            help="maximum time to wait for the instance to be ready",
        )

    @staticmethod
    def timeout_of(sp: argparse.ArgumentParser, text: str) -> None:
        """``--timeout SECONDS`` with its own help."""
        sp.add_argument("--timeout", type=positive_seconds, metavar="SECONDS", help=text)

    @staticmethod
    def names(sp: argparse.ArgumentParser, *, all_: bool = True) -> None:
        """Instance names, and ``--all`` unless ``all_`` is false."""
        sp.add_argument("names", nargs="*", metavar="NAME", help="instance names")
        if all_:
            sp.add_argument("--all", action="store_true", help="every instance")


def build_parser(only: str | None = None) -> Parser:
    """The full parser; with ``only``, just that verb's sub-parser (the hot path)."""
    p = Parser(prog="ketch", description="ketch: fresh Linux VMs from cloud images, on QEMU.")
    p.add_argument("-V", "--version", action="version", version=f"ketch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    verbs = Verbs(sub, only)
    areas = list(AREAS) if only is None else [AREA[ALIASES.get(only, only)]]
    for area in areas:
        module = __import__(f"ketch.cli.args_{area}", fromlist=["declare"])
        module.declare(verbs)
    return p
