"""SQLite store (WAL): instance specs and intents, the operation journal, settings, snapshots.

The store holds what the user asked for, never what is happening: there is
no "running" column.  Each state-changing step is journaled before it starts
and marked when it ends, so an operation interrupted by a crash is known when
ketchd starts again.  Schema versions live in ``PRAGMA user_version`` and
:data:`MIGRATIONS` moves a database forward one version at a time.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ketch.errors import AlreadyExists, KetchError, NotFound
from ketch.model import BootSpec, InstanceSpec, Intent

MIGRATIONS: tuple[str, ...] = (
    # 1: instances, journal, settings
    """
    CREATE TABLE instances (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        intent TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0,
        shutdown_at REAL,
        quarantine TEXT,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE journal (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        instance TEXT NOT NULL,
        op TEXT NOT NULL,
        step TEXT NOT NULL DEFAULT '',
        started REAL NOT NULL,
        finished REAL,
        outcome TEXT
    );
    CREATE INDEX journal_open ON journal(instance) WHERE finished IS NULL;
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: snapshot metadata (the qcow2 holds only the internal tag); per instance,
    # the snapshot the disk was last taken at or restored to, and how many were taken
    """
    CREATE TABLE snapshots (
        instance TEXT NOT NULL,
        name TEXT NOT NULL,
        tag TEXT NOT NULL UNIQUE,
        comment TEXT NOT NULL DEFAULT '',
        parent TEXT,
        created REAL NOT NULL,
        cpus INTEGER NOT NULL,
        memory INTEGER NOT NULL,
        disk INTEGER NOT NULL,
        PRIMARY KEY (instance, name)
    );
    CREATE TABLE snapshot_heads (
        instance TEXT PRIMARY KEY,
        head TEXT,
        taken INTEGER NOT NULL DEFAULT 0
    );
    """,
)


@dataclass(frozen=True)
class Record:
    """One instance row: the spec plus what the user last asked of it."""

    spec: InstanceSpec
    intent: Intent
    deleted: bool
    shutdown_at: float | None
    quarantine: str | None


@dataclass(frozen=True)
class JournalEntry:
    id: int
    instance: str
    op: str
    step: str
    started: float
    finished: float | None
    outcome: str | None


@dataclass(frozen=True)
class SnapshotRecord:
    """One snapshot's metadata; its data is the internal tag ``tag`` in the instance's disk."""

    instance: str
    name: str  # what the user sees: unique per instance
    tag: str  # the qcow2 internal snapshot tag
    comment: str
    parent: str | None  # the snapshot the disk was at when this one was taken
    created: float
    cpus: int  # the instance's resources when it was taken (restored with it)
    memory: int
    disk: int


def spec_to_json(spec: InstanceSpec) -> str:
    return json.dumps(asdict(spec), sort_keys=True)


def spec_from_json(text: str) -> InstanceSpec:
    data: dict[str, Any] = json.loads(text)
    data["boot"] = BootSpec(**data.get("boot", {}))
    fields = set(InstanceSpec.__dataclass_fields__)
    return InstanceSpec(**{k: v for k, v in data.items() if k in fields})


class Store:
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

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; SQLite's failures become KetchError here, once."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.IntegrityError:
            raise
        except sqlite3.OperationalError as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise KetchError(
                f"cannot write ketch's database: {exc}",
                hint="free some space in the storage root (or fix its permissions) and retry",
            ) from exc

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

    # -- instances ------------------------------------------------------------

    def add(self, spec: InstanceSpec, intent: Intent) -> None:
        now = time.time()
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO instances (name, spec, intent, created, updated)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (spec.name, spec_to_json(spec), intent.value, now, now),
                )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f'instance "{spec.name}" already exists') from exc

    def _row(self, row: tuple[Any, ...]) -> Record:
        return Record(
            spec=spec_from_json(row[0]),
            intent=Intent(row[1]),
            deleted=bool(row[2]),
            shutdown_at=row[3],
            quarantine=row[4],
        )

    def get(self, name: str) -> Record:
        row = self._db.execute(
            "SELECT spec, intent, deleted, shutdown_at, quarantine FROM instances WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            raise NotFound(f'instance "{name}" does not exist')
        return self._row(row)

    def exists(self, name: str) -> bool:
        q = "SELECT 1 FROM instances WHERE name = ?"
        return self._db.execute(q, (name,)).fetchone() is not None

    def all(self) -> list[Record]:
        rows = self._db.execute(
            "SELECT spec, intent, deleted, shutdown_at, quarantine FROM instances ORDER BY name"
        ).fetchall()
        return [self._row(r) for r in rows]

    def _update(self, name: str, column: str, value: Any) -> None:
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE instances SET {column} = ?, updated = ? WHERE name = ?",
                (value, time.time(), name),
            )
            if cur.rowcount == 0:
                raise NotFound(f'instance "{name}" does not exist')

    def set_intent(self, name: str, intent: Intent) -> None:
        self._update(name, "intent", intent.value)

    def set_deleted(self, name: str, deleted: bool) -> None:
        self._update(name, "deleted", int(deleted))

    def set_shutdown_at(self, name: str, when: float | None) -> None:
        self._update(name, "shutdown_at", when)

    def set_quarantine(self, name: str, reason: str | None) -> None:
        self._update(name, "quarantine", reason)

    def set_spec(self, spec: InstanceSpec) -> None:
        self._update(spec.name, "spec", spec_to_json(spec))

    def remove(self, name: str) -> None:
        """Forget an instance, and its snapshot metadata with it."""
        with self._tx() as db:
            db.execute("DELETE FROM instances WHERE name = ?", (name,))
            db.execute("DELETE FROM snapshots WHERE instance = ?", (name,))
            db.execute("DELETE FROM snapshot_heads WHERE instance = ?", (name,))

    def used_ports(self) -> set[int]:
        return {r.spec.ssh_port for r in self.all()}

    # -- journal ----------------------------------------------------------------

    def begin(self, instance: str, op: str, step: str = "") -> int:
        """Journal an operation before it changes anything; returns its id."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO journal (instance, op, step, started) VALUES (?, ?, ?, ?)",
                (instance, op, step, time.time()),
            )
            return int(cur.lastrowid or 0)

    def step(self, entry: int, step: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE journal SET step = ? WHERE id = ?", (step, entry))

    def finish(self, entry: int, outcome: str) -> None:
        """Mark an operation ended; older unfinished ones on its instance are superseded."""
        with self._tx() as db:
            row = db.execute("SELECT instance FROM journal WHERE id = ?", (entry,)).fetchone()
            now = time.time()
            db.execute(
                "UPDATE journal SET finished = ?, outcome = ? WHERE id = ?", (now, outcome, entry)
            )
            if row is not None:
                db.execute(
                    "UPDATE journal SET finished = ?, outcome = 'superseded'"
                    " WHERE instance = ? AND finished IS NULL AND id < ?",
                    (now, row[0], entry),
                )

    def unfinished(self) -> list[JournalEntry]:
        rows = self._db.execute(
            "SELECT id, instance, op, step, started, finished, outcome FROM journal"
            " WHERE finished IS NULL ORDER BY id"
        ).fetchall()
        return [JournalEntry(*r) for r in rows]

    def history(self, instance: str, limit: int = 20) -> list[JournalEntry]:
        rows = self._db.execute(
            "SELECT id, instance, op, step, started, finished, outcome FROM journal"
            " WHERE instance = ? ORDER BY id DESC LIMIT ?",
            (instance, limit),
        ).fetchall()
        return [JournalEntry(*r) for r in rows]

    # -- snapshots ----------------------------------------------------------------

    _SNAPSHOT_COLUMNS = "instance, name, tag, comment, parent, created, cpus, memory, disk"

    def add_snapshot(self, snap: SnapshotRecord) -> None:
        """Record a snapshot; it becomes the instance's head, and the taken count grows."""
        try:
            with self._tx() as db:
                db.execute(
                    f"INSERT INTO snapshots ({self._SNAPSHOT_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        snap.instance,
                        snap.name,
                        snap.tag,
                        snap.comment,
                        snap.parent,
                        snap.created,
                        snap.cpus,
                        snap.memory,
                        snap.disk,
                    ),
                )
                db.execute(
                    "INSERT INTO snapshot_heads (instance, head, taken) VALUES (?, ?, 1)"
                    " ON CONFLICT(instance) DO UPDATE SET head = excluded.head,"
                    " taken = taken + 1",
                    (snap.instance, snap.name),
                )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(
                f'snapshot "{snap.instance}.{snap.name}" already exists',
                hint="choose another name with --name",
            ) from exc

    def snapshots(self, instance: str | None = None) -> list[SnapshotRecord]:
        """Snapshots of one instance (or of all), oldest first."""
        q = f"SELECT {self._SNAPSHOT_COLUMNS} FROM snapshots"
        args: tuple[Any, ...] = ()
        if instance is not None:
            q += " WHERE instance = ?"
            args = (instance,)
        rows = self._db.execute(q + " ORDER BY instance, created, rowid", args).fetchall()
        return [SnapshotRecord(*r) for r in rows]

    def get_snapshot(self, instance: str, name: str) -> SnapshotRecord:
        row = self._db.execute(
            f"SELECT {self._SNAPSHOT_COLUMNS} FROM snapshots WHERE instance = ? AND name = ?",
            (instance, name),
        ).fetchone()
        if row is None:
            raise NotFound(f'snapshot "{instance}.{name}" does not exist')
        return SnapshotRecord(*row)

    def snapshot_by_tag(self, tag: str) -> SnapshotRecord | None:
        row = self._db.execute(
            f"SELECT {self._SNAPSHOT_COLUMNS} FROM snapshots WHERE tag = ?", (tag,)
        ).fetchone()
        return None if row is None else SnapshotRecord(*row)

    def remove_snapshot(self, instance: str, name: str) -> None:
        """Forget a snapshot: its children get its parent; so does the head if it was it."""
        with self._tx() as db:
            row = db.execute(
                "SELECT parent FROM snapshots WHERE instance = ? AND name = ?", (instance, name)
            ).fetchone()
            if row is None:
                return
            parent = row[0]
            db.execute("DELETE FROM snapshots WHERE instance = ? AND name = ?", (instance, name))
            db.execute(
                "UPDATE snapshots SET parent = ? WHERE instance = ? AND parent = ?",
                (parent, instance, name),
            )
            db.execute(
                "UPDATE snapshot_heads SET head = ? WHERE instance = ? AND head = ?",
                (parent, instance, name),
            )

    def snapshot_head(self, instance: str) -> str | None:
        """The snapshot the disk was last taken at or restored to, if any."""
        row = self._db.execute(
            "SELECT head FROM snapshot_heads WHERE instance = ?", (instance,)
        ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def set_snapshot_head(self, instance: str, name: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO snapshot_heads (instance, head) VALUES (?, ?)"
                " ON CONFLICT(instance) DO UPDATE SET head = excluded.head",
                (instance, name),
            )

    def snapshots_taken(self, instance: str) -> int:
        """How many snapshots were ever taken of the instance (for default names)."""
        row = self._db.execute(
            "SELECT taken FROM snapshot_heads WHERE instance = ?", (instance,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def snapshot_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT instance, count(*) FROM snapshots GROUP BY instance")
        return {str(i): int(n) for i, n in rows.fetchall()}

    # -- settings ----------------------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str | None) -> None:
        with self._tx() as db:
            if value is None:
                db.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                db.execute(
                    "INSERT INTO settings (key, value) VALUES (?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )

    def settings(self, prefix: str = "") -> list[tuple[str, str]]:
        """All settings whose key starts with ``prefix``."""
        rows = self._db.execute(
            "SELECT key, value FROM settings WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
        ).fetchall()
        return [(str(k), str(v)) for k, v in rows]
