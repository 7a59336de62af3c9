"""``ketch forward [--remove] NAME RULE...`` and ``ketch forwards [NAME...]``: port forwards.

Rules are checked here first (:func:`ketch.forward_rules.parse_rule`: a clear
message and exit 1 before anything is sent); ketchd checks them again.
"""

from __future__ import annotations

import argparse
import sys

from ketch.api import routes
from ketch.cli import client, report
from ketch.errors import KetchError
from ketch.forward_rules import parse_rule


def cmd_forward(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    for rule in args.rules:
        parse_rule(rule)
    route = routes.FORWARD_REMOVE if args.remove else routes.FORWARD_ADD
    failed = 0
    for rule in args.rules:
        try:
            result = client().call(route, m.ForwardBody(rule=rule), name=args.name)
        except KetchError as exc:
            failed = failed or exc.exit_code
            report("forward", exc)
            continue
        verb = (
            "Removed" if args.remove else "Forwarding" if result.changed else "Already forwarding"
        )
        print(f"{verb} {result.rule} ({result.name})")
    return failed


def forwards_output(doc: object, fmt: str) -> str:
    from ketch.api import models as m
    from ketch.cli import output

    assert isinstance(doc, m.ForwardsReply)
    if fmt == "json":
        return output.to_json(output.plain(doc))
    if fmt == "yaml":
        return output.to_yaml(output.plain(doc))
    header = ["Name", "Host", "Guest", "Protocol", "Type", "Active", "Note"]
    rows = [
        [
            name,
            f"{f.host_address}:{f.host_port}" if f.host_port is not None else "--",
            f"{f.guest_address + ':' if f.guest_address else ''}{f.guest_port}",
            f.protocol,
            f.type,
            "yes" if f.active else "no",
            f.note,
        ]
        for name, fwds in doc.forwards.items()
        for f in fwds
    ]
    if fmt == "csv":
        return output.to_csv(header, rows)
    if not rows:
        return "No forwards.\n"
    return output.table(header, rows)


def cmd_forwards(args: argparse.Namespace) -> int:
    doc = client().call(routes.FORWARDS, query={"names": ",".join(args.names)})
    sys.stdout.write(forwards_output(doc, args.format))
    for err in doc.errors:
        print(f"forwards failed: {err}", file=sys.stderr)
    return 2 if doc.errors else 0
