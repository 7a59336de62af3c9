"""SQLite store (WAL): instance specs and intents, the journal, settings, snapshots, hosts,
queued operations.

The store holds what the user asked for, never what is happening: there is
no "running" column.  Each state-changing step is journaled before it starts
and marked when it ends, so an operation interrupted by a crash is known when
ketchd starts again.  Schema versions live in ``PRAGMA user_version`` and
:data:`MIGRATIONS` moves a database forward one version at a time.

The tables' methods live in one module each (:mod:`.instances`,
:mod:`.journal`, :mod:`.snapshots`, :mod:`.settings`, :mod:`.hosts`, :mod:`.queued`, sharing
:mod:`.base`), the rows' types in :mod:`.records` and the schema in
:mod:`.schema`; this module opens the database and migrates it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from ketch.errors import KetchError, NotFound
from ketch.layout import HOSTS_RECORD, INSTANCES_DIR, SETTINGS_RECORD
from ketch.model import HostSpec, InstanceSpec, Intent
from ketch.store import mirror
from ketch.store.hosts import HostTable
from ketch.store.instances import InstanceTable
from ketch.store.journal import JournalTable
from ketch.store.queued import QueueTable
from ketch.store.records import JournalEntry, Record, SnapshotRecord, spec_from_json, spec_to_json
from ketch.store.schema import MIGRATIONS
from ketch.store.settings import SettingsTable
from ketch.store.snapshots import SnapshotTable

log = logging.getLogger(__name__)

__all__ = [
    "MIGRATIONS",
    "JournalEntry",
    "Record",
    "SnapshotRecord",
    "Store",
    "spec_from_json",
    "spec_to_json",
]


class Store(InstanceTable, JournalTable, SnapshotTable, SettingsTable, HostTable, QueueTable):
    """The one SQLite database of a storage root.

    Every method that changes an instance's record or its snapshots' metadata
    is wrapped here to rewrite that instance's mirror (``instances/<name>/
    instance.json``, :mod:`.mirror`) once the change is committed, and a
    setting changed rewrites ``settings.json`` and a host added or removed
    ``hosts.json``: the database is never the only copy.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._instances = path.parent / INSTANCES_DIR
        self._settings_record = path.parent / SETTINGS_RECORD
        self._hosts_record = path.parent / HOSTS_RECORD
        try:
            # 0600 whatever the umask: it holds users' cloud-init; SQLite gives
            # the -wal and -shm files the database's mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(str(path), timeout=10.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise KetchError(
                f"cannot open the database {path}: {exc}",
                hint="ketch doctor can inspect it; keep a copy before changing anything",
            ) from exc

    def close(self) -> None:
        self._db.close()

    # -- the mirror: each change rewrites the instance's instance.json -------------

    def mirrored(self, name: str) -> mirror.Mirrored | None:
        """What the mirror of ``name`` holds once written (None: no such record)."""
        try:
            record = self.get(name)
        except NotFound:
            return None
        return mirror.Mirrored(
            record,
            tuple(self.snapshots(name)),
            self.snapshot_head(name),
            self.snapshots_taken(name),
        )

    def _mirror(self, name: str) -> None:
        found = self.mirrored(name)
        if found is None:
            mirror.remove(self._instances / name)
            return
        try:
            mirror.write(self._instances / name, found)
        except OSError as exc:  # the database holds it: a missed mirror is logged, not fatal
            log.warning("cannot write the record mirror of %s: %s", name, exc)

    def add(self, spec: InstanceSpec, intent: Intent) -> None:
        super().add(spec, intent)
        self._mirror(spec.name)

    def _update(self, name: str, column: str, value: Any) -> None:
        super()._update(name, column, value)
        self._mirror(name)

    def remove(self, name: str) -> None:
        super().remove(name)
        self.unqueue(name)  # nothing is left to stop or purge
        mirror.remove(self._instances / name)

    def add_snapshot(self, snap: SnapshotRecord) -> None:
        super().add_snapshot(snap)
        self._mirror(snap.instance)

    def remove_snapshot(self, instance: str, name: str) -> None:
        super().remove_snapshot(instance, name)
        self._mirror(instance)

    def set_snapshot_head(self, instance: str, name: str | None) -> None:
        super().set_snapshot_head(instance, name)
        self._mirror(instance)

    def set_setting(self, key: str, value: str | None) -> None:
        super().set_setting(key, value)
        self.mirror_settings()

    def mirror_settings(self) -> None:
        try:
            mirror.write_settings(self._settings_record, self.settings())
        except OSError as exc:
            log.warning("cannot write the settings' mirror: %s", exc)

    def add_host(self, host: HostSpec) -> None:
        super().add_host(host)
        self.mirror_hosts()

    def remove_host(self, name: str) -> None:
        super().remove_host(name)
        self.mirror_hosts()

    def mirror_hosts(self) -> None:
        try:
            mirror.write_hosts(self._hosts_record, self.hosts())
        except OSError as exc:
            log.warning("cannot write the hosts' mirror: %s", exc)

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise KetchError(
                f"the database is schema version {version}, newer than this ketch knows "
                f"({len(MIGRATIONS)})",
                hint="upgrade ketch",
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._tx() as db:
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])
