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
from typing import Any, NoReturn

from ketch import __version__
from ketch.errors import EXIT_USAGE

Handler = Callable[[argparse.Namespace], int]

FORMATS = ("table", "json", "csv", "yaml")  # --format of list, info, find, ...

HELP = {
    "launch": "Create and start an instance",
    "list": "List all available instances or snapshots",
    "info": "Display information about instances or snapshots",
    "start": "Start instances",
    "stop": "Stop running instances",
    "suspend": "Suspend running instances",
    "restart": "Restart instances",
    "delete": "Delete instances and snapshots",
    "recover": "Recover deleted instances",
    "purge": "Purge all deleted instances permanently",
    "snapshot": "Take a snapshot of an instance",
    "restore": "Restore an instance from a snapshot",
    "clone": "Clone an instance",
    "mount": "Mount a local directory in the instance",
    "umount": "Unmount a directory from an instance",
    "exec": "Run a command on an instance",
    "shell": "Open a shell on a running instance",
    "transfer": "Transfer files between the host and instances",
    "find": "Display available images to create instances from",
    "get": "Get a configuration setting",
    "set": "Set a configuration setting",
    "image": "Build, list and prune cached images",
    "version": "Show version details",
    "help": "Display help about a command",
    "daemon": "Run ketchd in the foreground",
    "completion": "Print a shell completion script (bash or zsh)",
    "doctor": "Find, explain and (with --fix) repair inconsistent instances",
    "alias": "Create an alias",
    "aliases": "List available aliases",
    "unalias": "Remove aliases",
    "prefer": "Switch the current alias context",
    "forward": "Add (or --remove) an explicit port forward to an instance",
    "forwards": "List the port forwards of instances, automatic and explicit",
    "wait-ready": "Wait for ketchd (or an instance) to be ready",
    "networks": "List available network interfaces",
}

# Verbs (and aliases) whose sub-parser can be built alone.
VERBS = (set(HELP) | {"ls", "sh", "connect", "copy-files", "unmount"}) - {"help", "completion"}


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


def build_parser(only: str | None = None) -> Parser:
    """The full parser; with ``only``, just that verb's sub-parser (the hot path)."""
    p = Parser(prog="ketch", description="ketch: fresh Linux VMs from cloud images, on QEMU.")
    p.add_argument("-V", "--version", action="version", version=f"ketch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def cmd(name: str, module: str, *aliases: str) -> Parser:
        """The verb's sub-parser; its handler is ``cmd_<name>`` in ``ketch.cli.<module>``."""
        if only is not None and only != name and only not in aliases:
            return _Skip()  # type: ignore[return-value]
        sp: Parser = sub.add_parser(
            name, help=HELP[name], description=HELP[name], aliases=list(aliases)
        )
        sp.set_defaults(func=Command(module, "cmd_" + name.replace("-", "_")))
        return sp

    def fmt(sp: Parser) -> None:
        sp.add_argument("--format", choices=FORMATS, default="table", help="output format")

    def timeout(sp: Parser) -> None:
        sp.add_argument(
            "--timeout",
            type=positive_seconds,
            metavar="SECONDS",
            help="maximum time to wait for the instance to be ready",
        )

    def names(sp: Parser, *, all_: bool = True) -> None:
        sp.add_argument("names", nargs="*", metavar="NAME", help="instance names")
        if all_:
            sp.add_argument("--all", action="store_true", help="every instance")

    sp = cmd("launch", "verbs_instances")
    sp.add_argument(
        "image",
        nargs="?",
        default=None,
        help="tiny, debian-12, ALIAS, REMOTE:ALIAS, file:// or http(s):// URL",
    )
    sp.add_argument("-n", "--name", help="instance name (default: a random one)")
    sp.add_argument("-c", "--cpus", type=int, help="number of CPUs (default 1)")
    sp.add_argument("-m", "--memory", "--mem", dest="memory", help="memory, e.g. 1G (default 1G)")
    sp.add_argument("-d", "--disk", help="disk size, e.g. 5G (default 5G)")
    sp.add_argument("--cloud-init", metavar="FILE", help="#cloud-config user data, or - for stdin")
    sp.add_argument("--timeout", type=float, help="seconds to wait for the instance to be ready")
    sp.add_argument(
        "--firmware",
        choices=("bios", "uefi"),
        help="boot the image through SeaBIOS or UEFI (OVMF); default: what the image needs",
    )
    sp.add_argument(
        "--forward",
        action="append",
        default=[],
        metavar="[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]",
        help="forward a host port to the guest (repeatable); HOSTIP defaults to 127.0.0.1",
    )
    sp.add_argument(
        "--network",
        action="append",
        default=[],
        metavar="SPEC",
        help="add a NIC on a host bridge: name=BRIDGE[,mode=auto|manual][,mac=MAC], or BRIDGE "
        "(repeatable; see 'ketch networks')",
    )
    sp.add_argument(
        "--bridged", action="store_true", help="add a NIC on local.bridged-network (--network)"
    )
    sp.add_argument(
        "--mount",
        action="append",
        metavar="SOURCE:TARGET",
        help="mount a local directory in the instance (repeatable; TARGET default: SOURCE)",
    )

    sp = cmd("list", "verbs_instances", "ls")
    fmt(sp)
    sp.add_argument("--snapshots", action="store_true", help="list snapshots instead")
    sp = cmd("info", "verbs_instances")
    sp.add_argument("names", nargs="*", metavar="NAME", help="instances, or INSTANCE.SNAPSHOT")
    sp.add_argument("--all", action="store_true", help="every instance")
    sp.add_argument(
        "--snapshots", action="store_true", help="details of every snapshot of the instances"
    )
    fmt(sp)
    for verb in ("start", "suspend", "restart"):
        sp = cmd(verb, "verbs_instances")
        names(sp)
        if verb != "suspend":
            timeout(sp)
    sp = cmd("stop", "verbs_instances")
    names(sp)
    sp.add_argument(
        "-f", "--force", action="store_true", help="end the instance at once, from any state"
    )
    sp.add_argument("-t", "--time", help="shut down after this many minutes")
    sp.add_argument("-c", "--cancel", action="store_true", help="cancel a delayed shutdown")
    sp = cmd("delete", "verbs_instances")
    sp.add_argument("names", nargs="*", metavar="NAME", help="instances, or INSTANCE.SNAPSHOT")
    sp.add_argument("--all", action="store_true", help="every instance")
    sp.add_argument(
        "-p", "--purge", action="store_true", help="remove at once; cannot be recovered"
    )
    names(cmd("recover", "verbs_instances"))
    cmd("purge", "verbs_instances")

    sp = cmd("snapshot", "verbs_snapshots")
    sp.add_argument("instance", metavar="NAME", help="a stopped instance")
    sp.add_argument("-n", "--name", help="snapshot name (default: snapshotN)")
    sp.add_argument(
        "-c", "--comment", "-m", "--message", dest="comment", default="", help="a comment"
    )
    sp = cmd("restore", "verbs_snapshots")
    sp.add_argument("snapshot", metavar="NAME.SNAPSHOT", help="the snapshot to restore")
    sp.add_argument(
        "-d",
        "--destructive",
        action="store_true",
        help="discard the current state without asking whether to snapshot it first",
    )
    sp = cmd("clone", "verbs_snapshots")
    sp.add_argument("source", metavar="NAME", help="a stopped instance")
    sp.add_argument("-n", "--name", help="name of the clone (default: NAME-cloneN)")

    sp = cmd("mount", "verbs_mounts")
    sp.add_argument("source", metavar="SOURCE", help="the local directory to mount")
    sp.add_argument(
        "targets", nargs="+", metavar="INSTANCE[:TARGET]", help="where (default: SOURCE's path)"
    )
    sp.add_argument("-t", "--type", choices=("classic", "native"), default="classic")
    sp.add_argument(
        "-u", "--uid-map", action="append", metavar="HOST:GUEST", help="a user id mapping"
    )
    sp.add_argument(
        "-g", "--gid-map", action="append", metavar="HOST:GUEST", help="a group id mapping"
    )
    sp = cmd("umount", "verbs_mounts", "unmount")
    sp.add_argument("mounts", nargs="+", metavar="INSTANCE[:TARGET]", help="no TARGET: all")

    sp = cmd("exec", "verbs_guest")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument(
        "-d", "--working-directory", "--cd", dest="working_directory", help="directory to run in"
    )
    no_map(sp)
    sp.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    sp = cmd("shell", "verbs_guest", "sh", "connect")
    sp.add_argument("name", nargs="?", metavar="NAME", help="instance (default: the primary)")
    timeout(sp)
    sp = cmd("transfer", "verbs_guest", "copy-files")
    sp.add_argument(
        "paths", nargs="+", metavar="SRC... DST", help="NAME:PATH on the guest side, - for stdio"
    )
    sp.add_argument("-r", "--recursive", action="store_true", help="copy directories")
    sp.add_argument("-p", "--parents", action="store_true", help="make missing parent directories")

    sp = cmd("find", "verbs_images")
    sp.add_argument("query", nargs="?", help="[REMOTE:]TEXT")
    fmt(sp)
    sp.add_argument(
        "--show-unsupported", action="store_true", help="also images the remote marks unsupported"
    )
    sp.add_argument("--force-update", action="store_true", help="read the image catalogues afresh")
    sp.add_argument(
        "--only-images",
        action="store_true",
        help="show only images (ketch has no blueprints: every result is an image)",
    )
    sp = cmd("get", "verbs_system")
    sp.add_argument("key", nargs="?", metavar="KEY")
    sp.add_argument("--keys", action="store_true", help="list the settable keys (or check KEY)")
    sp.add_argument("--raw", action="store_true", help='an empty value as "", not <empty>')
    sp = cmd("set", "verbs_system")
    sp.add_argument("assignment", metavar="KEY[=VALUE]", help="with no value, it is asked for")

    sp = cmd("image", "verbs_images")
    isub = sp.add_subparsers(
        dest="image_command", metavar="ACTION", parser_class=Parser, required=True
    )
    b = isub.add_parser("build", help="build an image (tiny, debian-12)")
    b.add_argument("name", metavar="NAME", help="tiny or debian-12")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    ls = isub.add_parser("list", help="list cached images")
    fmt(ls)
    pr = isub.add_parser("prune", help="remove cached images unused for DAYS")
    pr.add_argument("--days", type=float, default=14.0)

    sp = cmd("doctor", "verbs_system")
    names(sp, all_=False)
    sp.add_argument("--fix", action="store_true", help="repair what can be repaired safely")
    sp.add_argument("--format", choices=("table", "json"), default="table", help="output format")

    sp = cmd("alias", "verbs_aliases")
    sp.add_argument("definition", metavar="INSTANCE:COMMAND", help="the command to run there")
    sp.add_argument("name", nargs="?", metavar="NAME", help="alias name (default: COMMAND's)")
    no_map(sp)
    sp = cmd("aliases", "verbs_aliases")
    fmt(sp)
    sp = cmd("unalias", "verbs_aliases")
    sp.add_argument("names", nargs="*", metavar="NAME", help="aliases (or CONTEXT.ALIAS)")
    sp.add_argument("--all", action="store_true", help="every alias of the current context")
    sp = cmd("prefer", "verbs_aliases")
    sp.add_argument("context", metavar="CONTEXT", help="the alias context to switch to")
    sp = cmd("forward", "verbs_forwards")
    sp.add_argument("name", metavar="NAME", help="the instance")
    sp.add_argument(
        "rules", nargs="+", metavar="[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]", help="the forwards"
    )
    sp.add_argument("--remove", action="store_true", help="remove these explicit forwards")
    sp = cmd("forwards", "verbs_forwards")
    sp.add_argument("names", nargs="*", metavar="NAME", help="instances (default: all)")
    fmt(sp)

    sp = cmd("version", "verbs_system")
    fmt(sp)
    sp = cmd("networks", "verbs_system")
    fmt(sp)
    sp = cmd("help", "verbs_system")
    sp.add_argument("topic", nargs="?", metavar="COMMAND")
    sp = cmd("wait-ready", "verbs_wait")
    sp.add_argument("name", nargs="?", metavar="NAME", help="an instance (default: only ketchd)")
    timeout(sp)
    sp = cmd("daemon", "verbs_system")
    sp.add_argument(
        "--install-unit",
        action="store_true",
        help="write and enable a systemd unit that starts ketchd at boot",
    )
    sp.add_argument("--system", action="store_true",
                    help="with --install-unit: a system unit, not the user's")  # fmt: skip
    sp = cmd("completion", "verbs_system")
    sp.add_argument("shell", choices=("bash", "zsh"))
    return p
