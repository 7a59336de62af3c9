"""The database is never the only copy: each instance's record mirrored in its directory.

``instances/<name>/instance.json`` (:data:`ketch.layout.INSTANCE_RECORD`)
holds what the store knows of one instance: its spec (as
:func:`~ketch.store.records.spec_to_json` writes it, so fields added to the
spec come along), intent, deleted flag, delayed shutdown, quarantine, and
its snapshots' metadata with the head and the taken count.  The store
rewrites it after each change it commits (:class:`~ketch.store.db.Store`
wraps its mutating methods), atomically: a temporary file in the same
directory, fsync, rename, fsync of the directory.  A directory that does not
exist is never made for it (launch makes the directory before the record).

:func:`to_doc` and :func:`from_doc` are pure; ``store/repair.py`` reads the
mirrors back when the database is damaged or gone.  The settings are
mirrored the same way, all of them in ``settings.json`` in the root
(:data:`ketch.layout.SETTINGS_RECORD`), and so are the hosts, in ``hosts.json``
(:data:`ketch.layout.HOSTS_RECORD`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ketch.layout import FILE_MODE, INSTANCE_RECORD
from ketch.model import HostSpec, Intent
from ketch.store.records import Record, SnapshotRecord, spec_from_json, spec_to_json

FORMAT = 1  # the document's own version, in its "format" key


@dataclass(frozen=True)
class Mirrored:
    """One instance as its directory's mirror tells it."""

    record: Record
    snapshots: tuple[SnapshotRecord, ...]
    head: str | None
    taken: int


def to_doc(m: Mirrored) -> dict[str, Any]:
    """The mirror's JSON document (pure)."""
    r = m.record
    return {
        "format": FORMAT,
        "spec": json.loads(spec_to_json(r.spec)),
        "intent": r.intent.value,
        "deleted": r.deleted,
        "shutdown_at": r.shutdown_at,
        "quarantine": r.quarantine,
        "snapshots": [asdict(s) for s in m.snapshots],
        "snapshot_head": m.head,
        "snapshots_taken": m.taken,
    }


def from_doc(doc: dict[str, Any]) -> Mirrored:
    """Read a mirror's document back (pure); KeyError/ValueError/TypeError when it is not one."""
    if doc.get("format") != FORMAT:
        raise ValueError(f"unknown instance record format {doc.get('format')!r}")
    record = Record(
        spec=spec_from_json(json.dumps(doc["spec"])),
        intent=Intent(doc["intent"]),
        deleted=bool(doc["deleted"]),
        shutdown_at=None if doc["shutdown_at"] is None else float(doc["shutdown_at"]),
        quarantine=None if doc["quarantine"] is None else str(doc["quarantine"]),
    )
    snaps = tuple(SnapshotRecord(**s) for s in doc.get("snapshots", ()))
    head = doc.get("snapshot_head")
    return Mirrored(record, snaps, None if head is None else str(head), int(doc["snapshots_taken"]))


def write(directory: Path, m: Mirrored) -> bool:
    """Write the mirror atomically into ``directory``; False (nothing written) when it is absent."""
    if not directory.is_dir():
        return False
    data = json.dumps(to_doc(m), sort_keys=True, indent=1).encode() + b"\n"
    return atomic_write(directory / INSTANCE_RECORD, data)


def atomic_write(target: Path, data: bytes) -> bool:
    """Temporary file beside ``target``, fsync, rename, fsync the directory; False when the
    directory is gone."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_native_id()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    except FileNotFoundError:  # removed meanwhile (a purge)
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)
    return True


def write_settings(path: Path, pairs: list[tuple[str, str]]) -> None:
    """The settings' mirror (``settings.json`` in the root): every key and value."""
    atomic_write(path, json.dumps(dict(pairs), sort_keys=True, indent=1).encode() + b"\n")


def read_settings(path: Path) -> dict[str, str]:
    """The settings' mirror; empty when there is none or it cannot be read."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {str(k): str(v) for k, v in doc.items()}


def write_hosts(path: Path, hosts: list[HostSpec]) -> None:
    """The hosts' mirror (``hosts.json`` in the root): every host as it was added."""
    doc = {"format": FORMAT, "hosts": [asdict(h) for h in hosts]}
    atomic_write(path, json.dumps(doc, sort_keys=True, indent=1).encode() + b"\n")


def read_hosts(path: Path) -> list[HostSpec]:
    """The hosts' mirror; empty when there is none or it cannot be read."""
    try:
        doc = json.loads(path.read_bytes())
        return [HostSpec(**h) for h in doc["hosts"]] if doc.get("format") == FORMAT else []
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove(directory: Path) -> None:
    """Forget the mirror (the instance's record was removed)."""
    with contextlib.suppress(FileNotFoundError):
        (directory / INSTANCE_RECORD).unlink()


def read(directory: Path) -> Mirrored | None:
    """The mirror in ``directory``; None when there is none or it cannot be read."""
    try:
        doc = json.loads((directory / INSTANCE_RECORD).read_bytes())
        return from_doc(doc)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_all(instances: Path) -> dict[str, Mirrored]:
    """Every readable mirror under the instances directory, by the directory's name."""
    found: dict[str, Mirrored] = {}
    if not instances.is_dir():
        return found
    for d in sorted(instances.iterdir()):
        m = read(d) if d.is_dir() and not d.is_symlink() else None
        if m is not None and m.record.spec.name == d.name:
            found[d.name] = m
    return found
