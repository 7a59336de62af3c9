"""``ketch snapshot``, ``restore`` and ``clone``."""

from __future__ import annotations

import argparse

from ketch.api import routes
from ketch.cli import ask, snapshot_ref, stream
from ketch.errors import InvalidArgument


def cmd_snapshot(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    if "." in args.instance:
        raise InvalidArgument(
            f"invalid instance name '{args.instance}'",
            hint="give the instance name only; name the snapshot with --name",
        )
    body = m.SnapshotBody(name=args.name, comment=args.comment)
    result = stream(routes.SNAPSHOT, body, name=args.instance)
    print(f"Snapshot taken: {args.instance}.{result.snapshot}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    instance, snapshot = snapshot_ref(args.snapshot)
    body = m.RestoreBody(destructive=True)
    if not args.destructive:
        answer = ask(
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
    result = stream(routes.RESTORE, body, name=instance, snapshot=snapshot)
    if result.saved:
        print(f"Snapshot taken: {instance}.{result.saved}")
    print(f"Snapshot restored: {instance}.{snapshot}")
    return 0


def cmd_clone(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    result = stream(routes.CLONE, m.CloneBody(name=args.name or None), name=args.source)
    print(f"Cloned from {args.source} to {result.name}.")
    return 0
