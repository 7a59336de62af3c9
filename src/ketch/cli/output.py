"""Output formats as Multipass prints them: table, json, csv, yaml."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from ketch.api import models as m


def plain(doc: Any) -> Any:
    """A reply model as the JSON document it came as (field order and all)."""
    return msgspec.to_builtins(doc)


def to_json(doc: Any) -> str:
    import json  # only for --format json

    return json.dumps(doc, indent=4) + "\n"


def to_yaml(doc: Any) -> str:
    import yaml  # only when asked: it is not free to import

    return str(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))


def to_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    import csv  # only for --format csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by at least two spaces, as Multipass does."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=False)]
    lines = []
    for row in [list(header), *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def human(n: int | str | None) -> str:
    if n in (None, ""):
        return "--"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)


def _without_hosts(doc: m.ListReply | m.InfoReply) -> Any:
    """The document as Multipass shapes it: the count of hosts is the table's business."""
    out = plain(doc)
    out.pop("hosts", None)
    return out


def list_output(doc: m.ListReply, fmt: str) -> str:
    items = doc.list
    multi = doc.hosts > 1  # a Host column only then: one host's output is Multipass's
    if fmt == "json":
        return to_json(_without_hosts(doc))
    if fmt == "yaml":
        entries = [plain(i) for i in items]
        return to_yaml({e["name"]: [{k: v for k, v in e.items() if k != "name"}] for e in entries})
    if fmt == "csv":
        return to_csv(
            ["Name", "State", "IPv4", "IPv6", "Release", "AllIPv4", "SSH"] + ["Host"] * multi,
            [
                [
                    i.name,
                    i.state,
                    (i.ipv4 or [""])[0],
                    "",
                    i.release,
                    ",".join(i.ipv4),
                    f"127.0.0.1:{i.ssh_port}",
                ]
                + [i.host] * multi
                for i in items
            ],
        )
    if not items:
        return "No instances found.\n"
    rows = []
    for i in items:
        first, *more = i.ipv4 or ["--"]
        state = i.state + (" (!)" if i.inconsistencies else "")
        rows.append([i.name, state, first, i.release or "--"] + [i.host] * multi)
        rows += [["", "", ip, ""] for ip in more]  # as Multipass: one address per line
    return table(["Name", "State", "IPv4", "Image"] + ["Host"] * multi, rows)


def networks_output(doc: m.NetworksReply, fmt: str) -> str:
    """``ketch networks``, as ``multipass networks`` prints it."""
    if fmt == "json":
        return to_json(plain(doc))
    if fmt == "yaml":
        return to_yaml({n.name: [{"type": n.type, "description": n.description}] for n in doc.list})
    rows = [[n.name, n.type, n.description] for n in doc.list]
    if fmt == "csv":
        return to_csv(["Name", "Type", "Description"], rows)
    if not rows:
        return "No network interfaces found.\n"
    return table(["Name", "Type", "Description"], rows)


def info_output(doc: m.InfoReply, fmt: str) -> str:
    if fmt == "json":
        return to_json(_without_hosts(doc))
    if fmt == "yaml":
        return to_yaml({"errors": doc.errors, **plain(doc.info)})
    # Instances, and snapshots asked for as INSTANCE.SNAPSHOT (under "snapshots").
    info = {name: i for name, i in doc.info.items() if i.is_instance}
    snaps = [
        (name, snap, s) for name, i in doc.info.items() for snap, s in (i.snapshots or {}).items()
    ]
    if not info:
        return snapshot_info_output(snaps, fmt)
    if snaps:
        return _instance_info(info, fmt, doc.hosts > 1) + "\n" + snapshot_info_output(snaps, fmt)
    return _instance_info(info, fmt, doc.hosts > 1)


T = TypeVar("T")


def _present(value: T | UnsetType) -> T:
    """A field every instance entry has (``InfoEntry`` checks that on decoding)."""
    assert not isinstance(value, UnsetType)
    return value


def _disk(i: m.InfoEntry) -> m.Disk | None:
    return next(iter(_present(i.disks).values()), None)


def _host(i: m.InfoEntry) -> str:
    return "local" if isinstance(i.host, UnsetType) else i.host


def _instance_info(info: dict[str, m.InfoEntry], fmt: str, multi: bool = False) -> str:
    """Instances' ``info`` as table or csv; ``multi``: more than one host, so a Host line."""
    if fmt == "csv":
        header = [
            "Name", "State", "Ipv4", "Ipv6", "Release", "Image hash", "Image release",
            "Load", "Disk usage", "Disk total", "Memory usage", "Memory total", "Mounts",
            "AllIPv4", "CPU(s)", "Snapshots", "SSH port", "Accel", "Inconsistencies",
        ] + ["Host"] * multi  # fmt: skip
        rows = []
        for name, i in info.items():
            disk, mem, ipv4 = _disk(i), _present(i.memory), _present(i.ipv4)
            rows.append(
                [
                    name,
                    i.state,
                    (ipv4 or [""])[0],
                    "",
                    i.release,
                    i.image_hash,
                    i.image_release,
                    " ".join(str(x) for x in _present(i.load)),
                    (disk.used or "") if disk else "",
                    disk.total if disk else "",
                    mem.used if mem.used is not UNSET else "",
                    mem.total,
                    "",
                    ",".join(ipv4),
                    i.cpu_count,
                    i.snapshot_count,
                    _present(i.ssh).port,
                    i.accel,
                    len(_present(i.inconsistencies)),
                ]
                + [_host(i)] * multi
            )
        return to_csv(header, rows)
    blocks = []
    for name, i in info.items():
        disk, mem, ssh = _disk(i), _present(i.memory), _present(i.ssh)
        used = None if mem.used is UNSET else mem.used
        pairs = [
            ("Name", name),
            ("State", i.state),
            ("Snapshots", i.snapshot_count),
            *_lines("IPv4", _present(i.ipv4) or ["--"]),
            ("Release", i.release or "--"),
            ("Image hash", i.image_hash or "--"),
            ("Image release", i.image_release or "--"),
            ("CPU(s)", i.cpu_count),
            ("Load", " ".join(str(x) for x in _present(i.load)) or "--"),
            ("Disk usage", _usage(disk.used or None, disk.total) if disk else "--"),
            ("Memory usage", _usage(used, mem.total)),
            ("Mounts", mounts_text(_present(i.mounts) if i.mounts is not UNSET else {})),
            ("SSH", f"{ssh.user}@127.0.0.1:{ssh.port}"),
            ("Accel", i.accel or "--"),
        ]
        if multi:
            pairs.insert(2, ("Host", _host(i)))
        for n, fwd in enumerate(i.forwards or ()):
            pairs.append(("Forwards" if n == 0 else "", forward_line(fwd)))
        if i.shutdown_at:
            pairs.append(("Shutdown at", i.shutdown_at))
        if i.launched:
            pairs.append(("Launched", i.launched))
        if i.quarantine:
            pairs.append(("Quarantine", i.quarantine))
        for n, inc in enumerate(_present(i.inconsistencies)):
            pairs.append(("Inconsistency" if n == 0 else "", f"{inc.message}"))
            pairs.append(("", f"  -> {inc.action}"))
        blocks.append("\n".join(f"{(k + ':') if k else '':<16}{v}" for k, v in pairs))
    return "\n\n".join(blocks) + "\n"


def _lines(key: str, values: Sequence[str]) -> list[tuple[str, str]]:
    """``key: first`` then one line per further value, as Multipass's info lists addresses."""
    return [(key if n == 0 else "", v) for n, v in enumerate(values)]


def forward_line(f: m.ForwardInfo) -> str:
    """``127.0.0.1:8080 -> 8080/tcp (automatic)``, and the note when there is one."""
    host = f"{f.host_address}:{f.host_port}" if f.host_port is not None else "--"
    line = f"{host} -> {f.guest_port}/{f.protocol} ({f.type})"
    return line + (f": {f.note}" if f.note else "")


def snapshot_info_output(snaps: Sequence[tuple[str, str, m.SnapshotInfo]], fmt: str) -> str:
    """Snapshot details as Multipass's ``info INSTANCE.SNAPSHOT`` shows them."""
    if fmt == "csv":
        header = [
            "Snapshot", "Instance", "CPU(s)", "Disk space", "Memory size", "Mounts",
            "Created", "Parent", "Children", "Comment",
        ]  # fmt: skip
        rows = [
            [
                snap, name, s.cpu_count, s.disk_space, s.memory_size, "", s.created, s.parent,
                ";".join(s.children), s.comment,
            ]
            for name, snap, s in snaps
        ]  # fmt: skip
        return to_csv(header, rows)
    blocks = []
    for name, snap, s in snaps:
        pairs = [
            ("Snapshot", snap),
            ("Instance", name),
            ("CPU(s)", s.cpu_count or "--"),
            ("Disk space", human(s.disk_space)),
            ("Memory size", human(s.memory_size)),
            ("Mounts", "--"),
            ("Created", s.created or "--"),
            ("Parent", s.parent or "--"),
            ("Children", ", ".join(s.children) or "--"),
            ("Comment", s.comment.replace("\n", "\n" + " " * 16) or "--"),
        ]
        blocks.append("\n".join(f"{k + ':':<16}{v}" for k, v in pairs))
    return "\n\n".join(blocks) + "\n"


def snapshot_list_output(doc: m.SnapshotListReply, fmt: str) -> str:
    """``ketch list --snapshots``: Multipass's columns Instance, Snapshot, Parent, Comment."""
    if fmt == "json":
        return to_json(plain(doc))
    if fmt == "yaml":
        return to_yaml(plain(doc))
    rows = [
        [name, snap, s.parent, s.comment]
        for name, snaps in doc.info.items()
        for snap, s in snaps.items()
    ]
    if fmt == "csv":
        return to_csv(["Instance", "Snapshot", "Parent", "Comment"], rows)
    if not rows:
        return "No snapshots found.\n"
    shown = [[i, n, p or "--", _one_line(c) or "--"] for i, n, p, c in rows]
    return table(["Instance", "Snapshot", "Parent", "Comment"], shown)


def _one_line(text: str, width: int = 50) -> str:
    """A comment in a table: its first line, cut at ``width`` with an ellipsis."""
    lines = text.splitlines()
    first = lines[0] if lines else ""
    if len(lines) > 1 or len(first) > width:
        return first[: width - 1].rstrip() + "…"
    return first


def _usage(used: Any, total: Any) -> str:
    if used in (None, ""):
        return f"-- out of {human(total)}" if total not in (None, "") else "--"
    return f"{human(used)} out of {human(total)}"


def _image_name(r: m.FindRow) -> str:
    """An image's name as ``find`` shows it: ``REMOTE:`` spelled out unless a default remote."""
    first = (r.aliases or [r.product])[0]
    return first if r.remote in ("ketch", "release") else f"{r.remote}:{first}"


def find_images(doc: m.FindReply) -> dict[str, dict[str, Any]]:
    """Multipass's ``images`` object: keyed by image name, ``aliases`` (the other names),
    ``os``, ``release``, ``remote``, ``version`` (src/client/cli/formatter/json_formatter.cpp)."""
    return {
        _image_name(r): {
            "aliases": list(r.aliases[1:]),
            "os": r.os,
            "release": r.release,
            "remote": r.remote,
            "version": r.version,
        }
        for r in doc.images
        if not r.error
    }


def find_output(doc: m.FindReply, fmt: str) -> str:
    """``find`` as Multipass prints it; remotes that could not be read are not in it (stderr)."""
    rows = [r for r in doc.images if not r.error]
    if fmt in ("json", "yaml"):
        found = {"errors": [], "images": find_images(doc)}  # ketch has no blueprints
        return to_json(found) if fmt == "json" else to_yaml(found)
    if fmt == "csv":
        return to_csv(
            ["Image", "Remote", "Aliases", "OS", "Release", "Version", "Type"],
            [
                [
                    _image_name(r),
                    r.remote,
                    ";".join(r.aliases[1:]),
                    r.os,
                    r.release,
                    r.version,
                    "Cloud Image",
                ]
                for r in rows
            ],
        )
    table_rows = [
        [_image_name(r), ",".join(r.aliases[1:]), r.version, r.description or r.release]
        for r in rows
    ]
    return table(["Image", "Aliases", "Version", "Description"], table_rows) if table_rows else ""


def find_errors(doc: m.FindReply) -> list[str]:
    """Remotes that could not be read, for stderr."""
    return [r.error for r in doc.images if r.error]


def doctor_output(findings: list[m.Finding], *, fixed: bool) -> str:
    if not findings:
        return "No problems found.\n"
    lines = []
    for f in findings:
        where = f.instance or "storage"
        lines.append(f"{where}: {f.message}")
        if fixed:
            mark = "fixed" if f.fixed else "NOT fixed"
            lines.append(f"  {mark}: {f.outcome or ''}")
        else:
            lines.append(f"  --fix would: {f.fix}")
    return "\n".join(lines) + "\n"


def mounts_text(mounts: dict[str, m.MountInfo]) -> str:
    """``info``'s Mounts value as Multipass prints it: ``SOURCE => TARGET`` (sources padded
    to one width), each followed by its ``UID map:`` and ``GID map:`` lines; ketch adds
    ``(native)``, ``(not active)`` and ``(over ssh)`` (a classic mount without its
    virtio-serial port: slower) where they apply."""
    if not mounts:
        return "--"
    width = max(len(x.source_path) for x in mounts.values())
    lines = []
    for target, x in mounts.items():
        notes = (
            (" (native)" if x.type == "native" else "")
            + (" (not active)" if x.active is False else "")
            + (" (over ssh)" if x.transport == "ssh" else "")
        )
        lines.append(f"{x.source_path:<{width}} => {target}{notes}")
        if x.uid_mappings:
            lines.append(f"{'':<4}UID map: {', '.join(x.uid_mappings)}")
        if x.gid_mappings:
            lines.append(f"{'':<4}GID map: {', '.join(x.gid_mappings)}")
    return ("\n" + " " * 16).join(lines)
