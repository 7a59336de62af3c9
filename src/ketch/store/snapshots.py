"""The ``snapshots`` and ``snapshot_heads`` tables: snapshot metadata (the disk holds the tags).

Per instance: each snapshot's name, tag, comment, parent and resources, the
snapshot the disk was last taken at or restored to (its head), and how many
were ever taken (for default names).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ketch.errors import AlreadyExists, NotFound
from ketch.store.base import Tables
from ketch.store.records import SnapshotRecord


class SnapshotTable(Tables):
    """Snapshot metadata."""

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

    def rename_snapshot(self, instance: str, name: str, new: str) -> None:
        """Rename a snapshot (its children's parent and the head follow); its tag stays."""
        try:
            with self._tx() as db:
                done = db.execute(
                    "UPDATE snapshots SET name = ? WHERE instance = ? AND name = ?",
                    (new, instance, name),
                )
                if done.rowcount == 0:
                    raise NotFound(f'snapshot "{instance}.{name}" does not exist')
                db.execute(
                    "UPDATE snapshots SET parent = ? WHERE instance = ? AND parent = ?",
                    (new, instance, name),
                )
                db.execute(
                    "UPDATE snapshot_heads SET head = ? WHERE instance = ? AND head = ?",
                    (new, instance, name),
                )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"Snapshot already exists: {instance}.{new}") from exc

    def set_snapshot_comment(self, instance: str, name: str, comment: str) -> None:
        with self._tx() as db:
            done = db.execute(
                "UPDATE snapshots SET comment = ? WHERE instance = ? AND name = ?",
                (comment, instance, name),
            )
            if done.rowcount == 0:
                raise NotFound(f'snapshot "{instance}.{name}" does not exist')

    def snapshot_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT instance, count(*) FROM snapshots GROUP BY instance")
        return {str(i): int(n) for i, n in rows.fetchall()}
