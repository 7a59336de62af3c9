"""The ``journal`` table: each state-changing operation, written before it starts.

An entry is begun before the operation changes anything, its step updated as
it goes and finished when it ends; what is left unfinished after a crash is
what recovery looks at when ketchd starts again.
"""

from __future__ import annotations

import time

from ketch.store.base import Tables
from ketch.store.records import JournalEntry


class JournalTable(Tables):
    """The operation journal."""

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
