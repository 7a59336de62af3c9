"""``ketch watch`` (the live events of ``GET /v1/events``) and ``ketch dashboard``."""

from __future__ import annotations

import argparse
import sys
import time

from ketch.cli import client


def describe(event: object) -> str:
    """One event as a line for people (``--format table``)."""
    from ketch.api import models as m

    stamp = time.strftime("%H:%M:%S", time.localtime(getattr(event, "time", time.time())))
    if isinstance(event, m.SnapshotEvent):
        rows = [f"{stamp} {len(event.instances)} instance(s), {len(event.operations)} operation(s)"]
        for i in event.instances:
            rows.append(f"{stamp}   {i.name}: {i.state}{_addr(i)}{_bad(i)}")
        for o in event.operations:
            rows.append(f"{stamp}   operation {o.id}: {o.kind} on {', '.join(o.instances)}")
        return "\n".join(rows)
    if isinstance(event, m.InstanceEvent):
        i, was = event.instance, event.previous
        change = "new" if was is None else (f"{was} -> {i.state}" if was != i.state else "changed")
        return f"{stamp} {i.name}: {i.state} ({change}){_addr(i)}{_bad(i)}"
    if isinstance(event, m.RemovedEvent):
        return f"{stamp} {event.name}: removed"
    if isinstance(event, m.InconsistencyEvent):
        x = event.inconsistency
        return f"{stamp} {event.name}: inconsistent: {x.message} ({x.action})"
    if isinstance(event, m.StartedEvent | m.EndedEvent):
        o = event.operation
        on = ", ".join(o.instances) or "-"
        if isinstance(event, m.StartedEvent):
            return f"{stamp} operation {o.id}: {o.kind} on {on} started"
        why = f": {o.error.message}" if o.error is not None else ""
        return f"{stamp} operation {o.id}: {o.kind} on {on} ended ({o.outcome}){why}"
    if isinstance(event, m.LaggedEvent):
        return f"{stamp} (this terminal read too slowly: {event.dropped} event(s) missed; resync)"
    return f"{stamp} {event!r}"


def _addr(i: object) -> str:
    ipv4 = getattr(i, "ipv4", [])
    return f" {ipv4[0]}" if ipv4 else ""


def _bad(i: object) -> str:
    found = getattr(i, "inconsistencies", [])
    return f" [{len(found)} inconsistency(ies)]" if found else ""


def cmd_watch(args: argparse.Namespace) -> int:
    from ketch.api import models as m  # first: it imports msgspec lightly

    # isort: split
    import msgspec

    from ketch.api.routes import WATCH
    from ketch.errors import DaemonUnreachable

    daemon = client()
    try:
        for line in daemon.watch(WATCH):
            if args.format == "json":
                sys.stdout.buffer.write(line + b"\n")
                sys.stdout.flush()
                continue
            try:
                event = m.decode_watch_event(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise DaemonUnreachable(f"ketchd sent a malformed event: {exc}") from exc
            print(describe(event), flush=True)
    except KeyboardInterrupt:
        return 0
    raise DaemonUnreachable(
        "ketchd closed the event stream", hint=f"is it still running? see {daemon.daemon_log}"
    )


def cmd_dashboard(args: argparse.Namespace) -> int:
    from ketch.api import models as m
    from ketch.api.routes import DASHBOARD

    reply = client().call(DASHBOARD, m.DashboardBody(ttl=args.ttl, port=args.port))
    print(reply.url, flush=True)
    print(
        f"(the URL logs in once, within {args.ttl:g} s; 'ketch dashboard' again makes a new one)",
        file=sys.stderr,
    )
    if not args.no_browser:
        import webbrowser

        webbrowser.open(reply.url)
    return 0
