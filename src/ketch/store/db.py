"""SQLite store (WAL): instance specs and intents, the operation journal, settings, snapshots.

The store holds what the user asked for, never what is happening: there is
no "running" column.  Each state-changing step is journaled before it starts
and marked when it ends, so an operation interrupted by a crash is known when
ketchd starts again.  Schema versions live in ``PRAGMA user_version`` and
:data:`MIGRATIONS` moves a database forward one version at a time.

The tables' methods live in one module each (:mod:`.instances`,
:mod:`.journal`, :mod:`.snapshots`, :mod:`.settings`, sharing
:mod:`.base`), the rows' types in :mod:`.records` and the schema in
:mod:`.schema`; this module opens the database and migrates it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ketch.errors import KetchError
from ketch.store.instances import InstanceTable
from ketch.store.journal import JournalTable
from ketch.store.records import JournalEntry, Record, SnapshotRecord, spec_from_json, spec_to_json
from ketch.store.schema import MIGRATIONS
from ketch.store.settings import SettingsTable
from ketch.store.snapshots import SnapshotTable

__all__ = [
    "MIGRATIONS",
    "JournalEntry",
    "Record",
    "SnapshotRecord",
    "Store",
    "spec_from_json",
    "spec_to_json",
]


class Store(InstanceTable, JournalTable, SnapshotTable, SettingsTable):
    """The one SQLite database of a storage root."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
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
