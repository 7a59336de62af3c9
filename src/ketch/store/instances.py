"""The ``instances`` table: each instance's spec and what the user last asked of it.

Removing an instance removes its snapshot metadata in the same transaction.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from ketch.errors import AlreadyExists, NotFound
from ketch.model import InstanceSpec, Intent
from ketch.store.base import Tables
from ketch.store.records import Record, spec_from_json, spec_to_json


class InstanceTable(Tables):
    """Instance records: added, read, updated one column at a time, removed."""

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
        return {p for r in self.all() for p in (r.spec.ssh_port, r.spec.host_ssh_port) if p}
