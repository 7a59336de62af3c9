"""``ketch launch``, ``list``, ``info``, ``start``, ``stop``, ``suspend``, ``restart``,
``delete``, ``recover`` and ``purge``: instances and their lifecycle.

``list`` and ``info`` are the hot path: they send their request before the
output module (and msgspec with the API's models) is imported; the client
imports the models while ketchd answers (see :mod:`ketch.client`).  So do the
lifecycle verbs (``suspend``, ``start``, ``stop``): :mod:`ketch.cli.progress`
imports the models only for the first event, and nothing here imports ``typing``.
"""

from __future__ import annotations

import argparse
import sys

from ketch.api import routes
from ketch.cli import ask, client, each, report, snapshot_ref, stream
from ketch.errors import EXIT_FAILED, InvalidArgument, KetchError
from ketch.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any


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
        "host": args.host,
    }
    if args.cloud_init:
        given["cloud_init"] = _read_text(args.cloud_init, "cloud-init")
    if args.forward:
        from ketch.forward_rules import parse_rule

        for rule in args.forward:
            parse_rule(rule)  # a bad rule: exit 1 before anything is sent
        given["forwards"] = list(args.forward)
    if args.network:
        given["networks"] = list(args.network)  # checked by ketchd
    if args.bridged:
        given["bridged"] = True
    if args.cold:
        given["cold"] = True
    if args.mount:
        from ketch.cli.verbs_mounts import launch_mount
        from ketch.cli.verbs_remote import refuse_remote

        refuse_remote("launch --mount")

        given["mounts"] = [
            m.MountRequest(source=s, target=t) for s, t in (launch_mount(x) for x in args.mount)
        ]
    body = m.LaunchBody(**{k: v for k, v in given.items() if v is not None})
    result = stream(routes.LAUNCH, body)
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
        listing = client().call(routes.SNAPSHOTS)
        from ketch.cli import output

        sys.stdout.write(output.snapshot_list_output(listing, args.format))
        return 0
    doc = client().call(routes.LIST)
    from ketch.cli import output

    if args.no_ipv4:  # Multipass's flag: the addresses left out ("--" in the table)
        import msgspec

        doc = msgspec.structs.replace(
            doc, list=[msgspec.structs.replace(i, ipv4=[]) for i in doc.list]
        )
    sys.stdout.write(output.list_output(doc, args.format))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    names = args.names  # none: every instance, as Multipass (src/client/cli/cmd/info.cpp)
    if args.snapshots:  # every snapshot of the named instances (all with --all), in detail
        if any("." in n for n in names):
            raise InvalidArgument("--snapshots takes instance names, not INSTANCE.SNAPSHOT")
        listing = client().call(routes.SNAPSHOTS, query={"names": ",".join(names)})
        names = [f"{i}.{s}" for i, snaps in listing.info.items() for s in snaps]
        if not names:
            for err in listing.errors:
                print(f"info failed: {err}", file=sys.stderr)
            if listing.errors:
                return 2
            print("No snapshots found.", file=sys.stderr)
            return 0
    query = {"names": ",".join(names)}
    if args.no_runtime_information:
        query["no_runtime_information"] = "true"
    doc = client().call(routes.INFO, query=query)
    from ketch.cli import output  # after the call, as in cmd_list

    sys.stdout.write(output.info_output(doc, args.format))
    for err in doc.errors:
        print(f"info failed: {err}", file=sys.stderr)
    return 2 if doc.errors else 0


def cmd_start(args: argparse.Namespace) -> int:
    if args.timeout is None:
        return each(routes.START, args)  # the body's defaults
    from ketch.api import models as m

    return each(routes.START, args, m.StartBody(timeout=args.timeout))


def cmd_stop(args: argparse.Namespace) -> int:
    if args.force and (args.time or args.cancel):
        raise InvalidArgument("--force cannot be combined with --time or --cancel")
    if not (args.force or args.cancel or args.time):
        return each(routes.STOP, args)  # the body's defaults
    from ketch.api import models as m

    minutes = None
    if args.time:
        try:
            minutes = float(args.time.lstrip("+"))
        except ValueError as exc:
            raise InvalidArgument(
                f"invalid time '{args.time}'", hint="give minutes, e.g. 5"
            ) from exc
    return each(routes.STOP, args, m.StopBody(force=args.force, cancel=args.cancel, time=minutes))


def cmd_suspend(args: argparse.Namespace) -> int:
    return each(routes.SUSPEND, args)


def cmd_restart(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    return each(routes.RESTART, args, m.StartBody(timeout=args.timeout))


def cmd_delete(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    if not args.names and not args.all:
        raise InvalidArgument("give instance names or --all")
    if args.names and args.all:
        raise InvalidArgument(
            "give instance names or --all, not both",
            hint="--all deletes every instance; snapshots are deleted by name only",
        )
    refs = [snapshot_ref(n) for n in args.names if "." in n]
    if refs and not args.purge:
        answer = ask(
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
            stream(routes.SNAPSHOT_DELETE, name=instance, snapshot=snapshot)
        except KetchError as exc:
            failed = failed or exc.exit_code
            report("delete", exc)
    args.names = [n for n in args.names if "." not in n]
    if args.names or args.all:
        body = m.DeleteBody(purge=args.purge)
        purged: list[str] = []
        failed = each(routes.DELETE, args, body, deleted_ok=args.purge, done=purged) or failed
        if args.purge:
            _forget_aliases(purged)
    return failed


def _forget_aliases(names: list[str]) -> None:
    """A purged instance's aliases go too (Multipass's delete and purge do the same)."""
    if names:
        from ketch.cli.verbs_aliases import forget_instances

        forget_instances(names)


def cmd_recover(args: argparse.Namespace) -> int:
    if not args.names and not args.all:
        raise InvalidArgument("give instance names or --all")
    return each(routes.RECOVER, args, deleted_ok=True)


def cmd_purge(args: argparse.Namespace) -> int:
    result = stream(routes.PURGE)
    _forget_aliases(list(result.purged))
    return 0
