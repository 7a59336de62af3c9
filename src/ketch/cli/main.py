"""``ketch``: the command line.  Verbs, flags, messages and exit codes follow Multipass.

Kept light on purpose: argparse only on the paths of ``list``, ``info`` and
``exec``; the API's models (msgspec) and the output formats are imported in the
verbs that use them, after the request is sent (see :mod:`ketch.client`); rich
and yaml are imported when used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ketch import __version__
from ketch.api import routes
from ketch.cli.parser import FORMATS, Parser
from ketch.errors import EXIT_FAILED, EXIT_USAGE, InvalidArgument, KetchError

if TYPE_CHECKING:
    from ketch.api import models as m
    from ketch.client import Client
    from ketch.model import SshTarget

B = TypeVar("B", bound="m.Body")
R = TypeVar("R", bound="m.Reply")

Handler = Callable[[argparse.Namespace], int]

BUILDABLE = ("tiny", "debian-12")  # images 'ketch image build' makes

HELP = {
    "launch": "Create and start an instance",
    "list": "List all available instances",
    "info": "Display information about instances",
    "start": "Start instances (a suspended instance resumes)",
    "stop": "Stop running instances",
    "suspend": "Suspend running instances",
    "restart": "Restart instances",
    "delete": "Delete instances",
    "recover": "Recover deleted instances",
    "purge": "Purge all deleted instances permanently",
    "snapshot": "Take a snapshot of a stopped instance",
    "restore": "Restore an instance from a snapshot",
    "clone": "Create an independent copy of a stopped instance",
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
}


# Verbs (and aliases) whose sub-parser can be built alone.
VERBS = (set(HELP) | {"ls", "sh", "connect", "copy-files"}) - {"help", "completion"}


def _client() -> Client:
    from ketch.client import Client
    from ketch.layout import Root, storage_root

    return Client(Root(storage_root()))


def _stream(route: routes.Route[B, R], body: B | None = None, **params: str) -> R:
    """Run an operation, showing its events; its result.  Ctrl-C asks ketchd to cancel it."""
    from ketch.cli.progress import interrupted, renderer

    client = _client()
    try:
        with renderer() as show:
            return client.run(route, body, show, **params)
    except KeyboardInterrupt:
        interrupted(client)  # says whether the daemon cancelled it or it goes on
        raise


def _names(args: argparse.Namespace, *, deleted_ok: bool = False) -> list[str]:
    """Instance names from the arguments; --all means every instance; none: the primary."""
    if getattr(args, "all", False):
        if args.names:
            raise InvalidArgument("give instance names or --all, not both")
        doc = _client().call(routes.LIST)
        return [i.name for i in doc.list if deleted_ok or i.state != "Deleted"]
    if args.names:
        return list(args.names)
    return [_primary_name()]


def _primary_name() -> str:
    name = _client().call(routes.GET_SETTING, key="client.primary-name").value
    if not name:
        raise InvalidArgument("no instance name given and the primary instance is disabled")
    return name


# -- commands ---------------------------------------------------------------------


def cmd_launch(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    given: dict[str, Any] = {
        "image": args.image,
        "name": args.name,
        "cpus": args.cpus,
        "memory": args.memory,
        "disk": args.disk,
        "timeout": args.timeout,
        "firmware": args.firmware,
    }
    if args.cloud_init:
        given["cloud_init"] = _read_text(args.cloud_init, "cloud-init")
    body = m.LaunchBody(**{k: v for k, v in given.items() if v is not None})
    result = _stream(routes.LAUNCH, body)
    print(f"Launched: {result.name}")
    return 0


def _read_text(path: str, what: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {what} file '{path}': {exc.strerror}") from exc


def cmd_list(args: argparse.Namespace) -> int:
    # The output module (msgspec with it) is imported after the call: the client
    # imports the models while ketchd answers (the hot path of 'ketch list').
    if args.snapshots:
        listing = _client().call(routes.SNAPSHOTS)
        from ketch.cli import output

        sys.stdout.write(output.snapshot_list_output(listing, args.format))
        return 0
    doc = _client().call(routes.LIST)
    from ketch.cli import output

    sys.stdout.write(output.list_output(doc, args.format))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    if not args.all and not args.names:
        raise InvalidArgument("give instance names or --all")
    names = args.names
    if args.snapshots:  # every snapshot of the named instances (all with --all), in detail
        if any("." in n for n in names):
            raise InvalidArgument("--snapshots takes instance names, not INSTANCE.SNAPSHOT")
        listing = _client().call(routes.SNAPSHOTS, query={"names": ",".join(names)})
        names = [f"{i}.{s}" for i, snaps in listing.info.items() for s in snaps]
        if not names:
            for err in listing.errors:
                print(f"info failed: {err}", file=sys.stderr)
            if listing.errors:
                return 2
            print("No snapshots found.", file=sys.stderr)
            return 0
    doc = _client().call(routes.INFO, query={"names": ",".join(names)})
    from ketch.cli import output  # after the call, as in cmd_list

    sys.stdout.write(output.info_output(doc, args.format))
    for err in doc.errors:
        print(f"info failed: {err}", file=sys.stderr)
    return 2 if doc.errors else 0


def _each(
    route: routes.Route[B, Any],
    args: argparse.Namespace,
    body: B | None = None,
    *,
    deleted_ok: bool = False,
) -> int:
    verb = route.name
    failed = 0
    for name in _names(args, deleted_ok=deleted_ok):
        try:
            _stream(route, body, name=name)
        except KetchError as exc:
            failed = failed or exc.exit_code
            _report(verb, exc)
    return failed


def cmd_start(args: argparse.Namespace) -> int:
    return _each(routes.START, args)


def cmd_stop(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    if args.force and (args.time or args.cancel):
        raise InvalidArgument("--force cannot be combined with --time or --cancel")
    minutes = None
    if args.time:
        try:
            minutes = float(args.time.lstrip("+"))
        except ValueError as exc:
            raise InvalidArgument(
                f"invalid time '{args.time}'", hint="give minutes, e.g. 5"
            ) from exc
    return _each(routes.STOP, args, m.StopBody(force=args.force, cancel=args.cancel, time=minutes))


def cmd_suspend(args: argparse.Namespace) -> int:
    return _each(routes.SUSPEND, args)


def cmd_restart(args: argparse.Namespace) -> int:
    return _each(routes.RESTART, args)


def cmd_delete(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    if not args.names and not args.all:
        raise InvalidArgument("give instance names or --all")
    if args.names and args.all:
        raise InvalidArgument(
            "give instance names or --all, not both",
            hint="--all deletes every instance; snapshots are deleted by name only",
        )
    refs = [_snapshot_ref(n) for n in args.names if "." in n]
    if refs and not args.purge:
        answer = _ask(
            "Snapshots can only be purged (after deletion, they cannot be recovered). "
            "Are you sure you want to continue? (Yes/no): "
        )
        if answer is None:
            raise InvalidArgument(
                "snapshots can only be purged (after deletion, they cannot be recovered), "
                "and there is no terminal to confirm it",
                hint="add --purge if that is what you want",
            )
        if not answer:
            print("delete cancelled: nothing was deleted", file=sys.stderr)
            return EXIT_FAILED
    failed = 0
    for instance, snapshot in refs:  # first: deleting an instance may take its snapshots
        try:
            _stream(routes.SNAPSHOT_DELETE, name=instance, snapshot=snapshot)
        except KetchError as exc:
            failed = failed or exc.exit_code
            _report("delete", exc)
    args.names = [n for n in args.names if "." not in n]
    if args.names or args.all:
        body = m.DeleteBody(purge=args.purge)
        failed = _each(routes.DELETE, args, body, deleted_ok=args.purge) or failed
    return failed


def _snapshot_ref(text: str) -> tuple[str, str]:
    """``INSTANCE.SNAPSHOT`` split in two, or InvalidArgument."""
    instance, dot, snapshot = text.partition(".")
    if not dot or not instance or not snapshot:
        raise InvalidArgument(
            f"invalid snapshot '{text}'", hint="give it as INSTANCE.SNAPSHOT, e.g. web.snapshot1"
        )
    return instance, snapshot


def _ask(question: str) -> bool | None:
    """Yes/no on a terminal (empty means yes); None when there is no terminal to ask."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return None
    while True:
        try:
            answer = input(question).strip().lower()
        except EOFError:
            return None
        if answer in ("", "y", "yes"):
            return True
        if answer in ("n", "no"):
            return False
        print("Please answer yes or no.")


def cmd_snapshot(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    if "." in args.instance:
        raise InvalidArgument(
            f"invalid instance name '{args.instance}'",
            hint="give the instance name only; name the snapshot with --name",
        )
    body = m.SnapshotBody(name=args.name, comment=args.comment)
    result = _stream(routes.SNAPSHOT, body, name=args.instance)
    print(f"Snapshot taken: {args.instance}.{result.snapshot}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    instance, snapshot = _snapshot_ref(args.snapshot)
    body = m.RestoreBody(destructive=True)
    if not args.destructive:
        answer = _ask(
            f"Do you want to take a snapshot of {instance} before discarding its current "
            "state? (Yes/no): "
        )
        if answer is None:
            raise InvalidArgument(
                f"restoring discards the current state of {instance}, and there is no terminal "
                "to ask whether to snapshot it first",
                hint=f"add --destructive to discard it, or run 'ketch snapshot {instance}' first",
            )
        body = m.RestoreBody(snapshot_first=True) if answer else m.RestoreBody(destructive=True)
    result = _stream(routes.RESTORE, body, name=instance, snapshot=snapshot)
    if result.saved:
        print(f"Snapshot taken: {instance}.{result.saved}")
    print(f"Snapshot restored: {instance}.{snapshot}")
    return 0


def cmd_clone(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    result = _stream(routes.CLONE, m.CloneBody(name=args.name or None), name=args.source)
    print(f"Cloned from {args.source} to {result.name}.")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    if not args.names and not args.all:
        raise InvalidArgument("give instance names or --all")
    return _each(routes.RECOVER, args, deleted_ok=True)


def cmd_purge(args: argparse.Namespace) -> int:
    _stream(routes.PURGE)
    return 0


def _target(name: str) -> SshTarget:
    from ketch.errors import RemoteError
    from ketch.model import SshTarget

    client = _client()
    try:
        doc = client.call(routes.SSH, name=name)
    except RemoteError as exc:
        if exc.code != "invalid-state":
            raise
        _stream(routes.START, name=name)  # as Multipass: start it first
        doc = client.call(routes.SSH, name=name)
    return SshTarget(
        name=doc.name,
        host=doc.host,
        port=doc.port,
        user=doc.user,
        identity=doc.identity,
        known_hosts=doc.known_hosts,
    )


def cmd_exec(args: argparse.Namespace) -> int:
    from ketch.cli import guest

    workdir, command = exec_request(args)
    if not command:
        raise InvalidArgument("no command given", hint="ketch exec NAME -- COMMAND [ARGS...]")
    return guest.exec_command(_target(args.name), command, workdir=workdir)


def _exec_options(argv: list[str], workdir: str | None) -> tuple[str | None, list[str]]:
    """Options may also follow the name, as Multipass allows (up to the command)."""
    while argv and argv[0].startswith("-"):
        opt = argv.pop(0)
        key, eq, value = opt.partition("=")
        if key not in ("-d", "--working-directory", "--cd"):
            raise InvalidArgument(f"unknown exec option '{opt}'", hint="put the command after '--'")
        if not eq:
            if not argv:
                raise InvalidArgument(f"{key} needs a directory")
            value = argv.pop(0)
        workdir = value
    return workdir, argv


def cmd_shell(args: argparse.Namespace) -> int:
    from ketch.api import models as m
    from ketch.cli import guest
    from ketch.errors import RemoteError

    name = args.name or _primary_name()
    if not args.name:
        try:
            _client().call(routes.INFO, query={"names": name})
        except RemoteError as exc:
            if exc.code != "not-found":
                raise
            print(f"Launching {name}", file=sys.stderr)
            _stream(routes.LAUNCH, m.LaunchBody(name=name))
    return guest.shell(_target(name))


def cmd_transfer(args: argparse.Namespace) -> int:
    from ketch.cli import guest

    if len(args.paths) < 2:
        raise InvalidArgument("give at least one source and a destination")
    guest.transfer(
        args.paths[:-1],
        args.paths[-1],
        resolve=_target,
        recursive=args.recursive,
        parents=args.parents,
    )
    return 0


def cmd_find(args: argparse.Namespace) -> int:
    from ketch.cli import output

    doc = _client().call(routes.FIND, query={"query": args.query} if args.query else None)
    sys.stdout.write(output.find_output(doc, args.format))
    for error in output.find_errors(doc):
        print(f"warning: {error}", file=sys.stderr)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    print(_client().call(routes.GET_SETTING, key=args.key).value)
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    key, sep, value = args.assignment.partition("=")
    if not sep or not key:
        raise InvalidArgument(f"invalid setting '{args.assignment}'", hint="use KEY=VALUE")
    _client().call(routes.SET_SETTING, m.SettingBody(value=value), key=key)
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from ketch.api import models as m
    from ketch.cli import output

    if args.image_command == "build":
        if args.name not in BUILDABLE:
            raise InvalidArgument(
                f"unknown image '{args.name}'", hint="ketch can build: " + ", ".join(BUILDABLE)
            )
        result = _stream(routes.BUILD, m.BuildBody(name=args.name, force=args.force))
        print(f"Built: {result.id} ({result.disk})")
        return 0
    if args.image_command == "prune":
        pruned = _client().call(routes.PRUNE, m.PruneBody(days=args.days))
        for e in pruned.removed:
            print(f"Removed {e.digest[:12]} ({output.human(e.size)})")
        return 0
    doc = _client().call(routes.IMAGES)
    if args.format != "table":
        fmt = output.to_json if args.format == "json" else output.to_yaml
        sys.stdout.write(fmt(output.plain(doc)))
        return 0
    rows = [
        [
            e.digest if e.source == "built" else e.digest[:12],
            output.human(e.size),
            ",".join(e.owners) or "--",
            e.source or "--",
        ]
        for e in doc.images
    ]
    sys.stdout.write(output.table(["Image", "Size", "Used by", "Source"], rows))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from ketch.api import models as m
    from ketch.cli import output

    result = _stream(routes.DOCTOR, m.DoctorBody(names=list(args.names), fix=args.fix))
    findings = result.findings
    if args.format == "json":
        sys.stdout.write(output.to_json(output.plain(result)))
    else:
        sys.stdout.write(output.doctor_output(findings, fixed=args.fix))
    unresolved = [f for f in findings if not f.fixed]
    return 2 if unresolved else 0


def cmd_version(args: argparse.Namespace) -> int:
    from ketch.cli import output
    from ketch.errors import DaemonUnreachable

    try:
        daemon = _client().call(routes.VERSION).ketchd
    except DaemonUnreachable:
        daemon = ""
    if args.format == "json":
        sys.stdout.write(output.to_json({"ketch": __version__, "ketchd": daemon}))
    else:
        print(f"ketch   {__version__}")
        print(f"ketchd  {daemon or '--'}")
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    from ketch.daemon.main import main as daemon_main

    return daemon_main([])


def cmd_completion(args: argparse.Namespace) -> int:
    from ketch.cli.completion import script

    sys.stdout.write(script(args.shell, build_parser()))
    return 0


# -- parser -------------------------------------------------------------------------


class _Skip:
    """Stands in for the sub-parsers a run does not need (they cost ~0.5 ms each)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


def build_parser(only: str | None = None) -> Parser:
    """The full parser; with ``only``, just that verb's sub-parser (the hot path)."""
    p = Parser(prog="ketch", description="ketch: fresh Linux VMs from cloud images, on QEMU.")
    p.add_argument("-V", "--version", action="version", version=f"ketch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def cmd(name: str, fn: Handler, *aliases: str) -> Parser:
        if only is not None and only != name and only not in aliases:
            return _Skip()  # type: ignore[return-value]
        sp: Parser = sub.add_parser(
            name, help=HELP[name], description=HELP[name], aliases=list(aliases)
        )
        sp.set_defaults(func=fn)
        return sp

    def fmt(sp: Parser) -> None:
        sp.add_argument("--format", choices=FORMATS, default="table", help="output format")

    def names(sp: Parser, *, all_: bool = True) -> None:
        sp.add_argument("names", nargs="*", metavar="NAME", help="instance names")
        if all_:
            sp.add_argument("--all", action="store_true", help="every instance")

    sp = cmd("launch", cmd_launch)
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

    sp = cmd("list", cmd_list, "ls")
    fmt(sp)
    sp.add_argument("--snapshots", action="store_true", help="list snapshots instead")
    sp = cmd("info", cmd_info)
    sp.add_argument("names", nargs="*", metavar="NAME", help="instances, or INSTANCE.SNAPSHOT")
    sp.add_argument("--all", action="store_true", help="every instance")
    sp.add_argument(
        "--snapshots", action="store_true", help="details of every snapshot of the instances"
    )
    fmt(sp)
    for verb, fn in (("start", cmd_start), ("suspend", cmd_suspend), ("restart", cmd_restart)):
        names(cmd(verb, fn))
    sp = cmd("stop", cmd_stop)
    names(sp)
    sp.add_argument(
        "-f", "--force", action="store_true", help="end the instance at once, from any state"
    )
    sp.add_argument("-t", "--time", help="shut down after this many minutes")
    sp.add_argument("-c", "--cancel", action="store_true", help="cancel a delayed shutdown")
    sp = cmd("delete", cmd_delete)
    sp.add_argument("names", nargs="*", metavar="NAME", help="instances, or INSTANCE.SNAPSHOT")
    sp.add_argument("--all", action="store_true", help="every instance")
    sp.add_argument(
        "-p", "--purge", action="store_true", help="remove at once; cannot be recovered"
    )
    names(cmd("recover", cmd_recover))
    cmd("purge", cmd_purge)

    sp = cmd("snapshot", cmd_snapshot)
    sp.add_argument("instance", metavar="NAME", help="a stopped instance")
    sp.add_argument("-n", "--name", help="snapshot name (default: snapshotN)")
    sp.add_argument(
        "-c", "--comment", "-m", "--message", dest="comment", default="", help="a comment"
    )
    sp = cmd("restore", cmd_restore)
    sp.add_argument("snapshot", metavar="NAME.SNAPSHOT", help="the snapshot to restore")
    sp.add_argument(
        "-d",
        "--destructive",
        action="store_true",
        help="discard the current state without asking whether to snapshot it first",
    )
    sp = cmd("clone", cmd_clone)
    sp.add_argument("source", metavar="NAME", help="a stopped instance")
    sp.add_argument("-n", "--name", help="name of the clone (default: NAME-cloneN)")

    sp = cmd("exec", cmd_exec)
    sp.add_argument("name", metavar="NAME")
    sp.add_argument(
        "-d", "--working-directory", "--cd", dest="working_directory", help="directory to run in"
    )
    sp.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    sp = cmd("shell", cmd_shell, "sh", "connect")
    sp.add_argument("name", nargs="?", metavar="NAME", help="instance (default: the primary)")
    sp = cmd("transfer", cmd_transfer, "copy-files")
    sp.add_argument(
        "paths", nargs="+", metavar="SRC... DST", help="NAME:PATH on the guest side, - for stdio"
    )
    sp.add_argument("-r", "--recursive", action="store_true", help="copy directories")
    sp.add_argument("-p", "--parents", action="store_true", help="make missing parent directories")

    sp = cmd("find", cmd_find)
    sp.add_argument("query", nargs="?", help="[REMOTE:]TEXT")
    fmt(sp)
    sp = cmd("get", cmd_get)
    sp.add_argument("key", metavar="KEY")
    sp = cmd("set", cmd_set)
    sp.add_argument("assignment", metavar="KEY=VALUE")

    sp = cmd("image", cmd_image)
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

    sp = cmd("doctor", cmd_doctor)
    names(sp, all_=False)
    sp.add_argument("--fix", action="store_true", help="repair what can be repaired safely")
    sp.add_argument("--format", choices=("table", "json"), default="table", help="output format")

    sp = cmd("version", cmd_version)
    fmt(sp)
    sp = cmd("help", cmd_help)
    sp.add_argument("topic", nargs="?", metavar="COMMAND")
    cmd("daemon", cmd_daemon)
    sp = cmd("completion", cmd_completion)
    sp.add_argument("shell", choices=("bash", "zsh"))
    return p


def cmd_help(args: argparse.Namespace) -> int:
    parser = build_parser()
    if not args.topic:
        parser.print_help()
        return 0
    parser.parse_args([args.topic, "--help"])
    return 0


def _report(verb: str, exc: KetchError) -> None:
    print(f"{verb} failed: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)


def parse_args(parser: Parser, args_list: list[str]) -> argparse.Namespace:
    """Parse a command line; for ``exec``, everything after the first "--" is literal.

    (argparse would drop that "--" and read a command such as ``-d x`` as options.)
    """
    literal: list[str] = []
    if args_list[:1] == ["exec"] and "--" in args_list:
        cut = args_list.index("--")
        args_list, literal = args_list[:cut], args_list[cut + 1 :]
    args = parser.parse_args(args_list)
    if args_list[:1] == ["exec"]:
        args.literal = literal
    return args


def exec_request(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The working directory and the guest command of a parsed ``exec``."""
    workdir, command = _exec_options(list(args.argv), args.working_directory)
    return workdir, command + list(getattr(args, "literal", []))


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    verb = args_list[0] if args_list else None
    parser = build_parser(verb if verb in VERBS else None)
    args = parse_args(parser, args_list)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.func(args)
    except KetchError as exc:
        _report(args.command, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
