"""``ketch snapshot``, ``restore`` and ``clone``."""

from __future__ import annotations

import argparse

from ketch.api import routes
from ketch.cli import ask, client, snapshot_ref, stream
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
        _check_restorable(instance, snapshot)  # first: a script answering nothing never waits
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


def _check_restorable(instance: str, snapshot: str) -> None:
    """Refuse now, before the question, what ketchd would refuse: a missing instance or
    snapshot, or an instance not Stopped (the daemon's own sentence and hint)."""
    from ketch.errors import NotFound
    from ketch.model import State, Verb
    from ketch.vocabulary import require, suspended_hint

    doc = client().call(routes.INFO, query={"names": f"{instance},{instance}.{snapshot}"})
    entry = doc.info.get(instance)
    if entry is None or not entry.is_instance:
        raise NotFound("\n".join(doc.errors) or f'instance "{instance}" does not exist')
    state = State(entry.state) if isinstance(entry.state, str) else State.UNKNOWN
    hint = f"stop it first: 'ketch stop {instance}'"
    if state is State.SUSPENDED:
        libvirt = isinstance(entry.host, str) and entry.host != "local"
        hint = suspended_hint(instance, managed_save=libvirt)
    require(
        instance,
        state,
        Verb.RESTORE,
        quarantine=entry.quarantine if isinstance(entry.quarantine, str) else None,
        deleted=state is State.DELETED,
        hint=hint,
    )
    if doc.errors:  # the snapshot does not exist
        raise NotFound("\n".join(doc.errors))


def cmd_clone(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    body = m.CloneBody(name=args.name or None, mounts=args.mounts, host=args.host)
    result = stream(routes.CLONE, body, name=args.source)
    print(f"Cloned from {args.source} to {result.name}.")
    return 0
