"""``ketch host add|list|remove``: the hosts instances run on (``local``, and libvirt hosts).

``--ssh-key`` is made absolute here (ketchd runs ssh with it, from its own directory);
``--known-hosts`` is read here and its text sent, so ketchd keeps its own copy.
"""

from __future__ import annotations

import argparse
import os
import sys

from ketch.api import routes
from ketch.cli import client
from ketch.errors import InvalidArgument
from ketch.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from ketch.api import models as m

MAX_KNOWN_HOSTS = 64 * 1024


def _known_hosts(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_KNOWN_HOSTS + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read --known-hosts {path}: {exc}") from exc
    if len(text) > MAX_KNOWN_HOSTS:
        raise InvalidArgument(f"--known-hosts {path}: larger than {MAX_KNOWN_HOSTS} bytes")
    return text


def _query(args: argparse.Namespace) -> dict[str, str] | None:
    return None if args.timeout is None else {"timeout": str(args.timeout)}


def _memory(row: m.HostRow) -> str:
    from ketch.cli.output import human

    if row.memory_free is None:
        return "--"
    return f"{human(row.memory_free)} of {human(row.memory_total)}"


def _disk(row: m.HostRow) -> str:
    from ketch.cli.output import human

    if row.disk_free is None:
        return "--" if row.state == "unreachable" or row.driver == "qemu" else "no pool"
    return human(row.disk_free) + (f" ({row.disk_pool})" if row.disk_pool else "")


def hosts_output(doc: m.HostListReply, fmt: str) -> str:
    """``host list`` as table, json, csv or yaml."""
    from ketch.cli import output

    if fmt == "json":
        return output.to_json(output.plain(doc))
    if fmt == "yaml":
        rows = [output.plain(r) for r in doc.list]
        return output.to_yaml({r.pop("name"): [r] for r in rows})
    if fmt == "csv":
        header = [
            "Name", "Driver", "URI", "State", "Reason", "Instances", "CPUs", "MemoryTotal",
            "MemoryFree", "DiskFree", "DiskPool", "Libvirt",
        ]  # fmt: skip
        cells = [
            [r.name, r.driver, r.uri, r.state, r.reason, r.instances, r.cpus or "",
             r.memory_total or "", r.memory_free or "", r.disk_free or "", r.disk_pool or "",
             r.libvirt_version or ""]
            for r in doc.list
        ]  # fmt: skip
        return output.to_csv(header, cells)
    header = ["Name", "Driver", "URI", "State", "Instances", "CPUs", "Free memory", "Free disk"]
    rows = [
        [r.name, r.driver, r.uri or "--", r.state, str(r.instances),
         "--" if r.cpus is None else str(r.cpus), _memory(r), _disk(r)]
        for r in doc.list
    ]  # fmt: skip
    if any(r.reason for r in doc.list):
        header.append("Reason")
        for row, r in zip(rows, doc.list, strict=True):
            row.append(r.reason)
    return output.table(header, rows)


def cmd_host(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    if args.host_command == "add":
        extra = {} if args.timeout is None else {"timeout": float(args.timeout)}
        body = m.HostAddBody(
            name=args.name,
            uri=args.uri,
            ssh_key=None if args.ssh_key is None else os.path.abspath(args.ssh_key),
            known_hosts=None if args.known_hosts is None else _known_hosts(args.known_hosts),
            **extra,
        )
        row = client().call(routes.HOST_ADD, body).host
        if row.state == "reachable":
            print(f"Added host {row.name}: {row.cpus} CPUs, {_memory(row)} free")
        else:
            print(f"Added host {row.name}; it does not answer now: {row.reason}")
        return 0
    if args.host_command == "list":
        doc = client().call(routes.HOST_LIST, query=_query(args))
        sys.stdout.write(hosts_output(doc, args.format))
        return 0
    client().call(routes.HOST_REMOVE, name=args.name)
    print(f"Removed host {args.name}")
    return 0
