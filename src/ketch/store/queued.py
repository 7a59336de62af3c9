"""The ``queued`` table: ``stop --force`` and ``delete --purge`` waiting for a host to answer.

An instance whose libvirt host does not answer cannot be stopped or purged now; the
operation is queued here (one per instance: a purge outranks a force-stop, which it
includes) so that a ketchd started again still has it, and carried out once the host
answers (``service/queued.py``).  A row goes when its operation has run, or when the
instance is purged.
"""

from __future__ import annotations

from dataclasses import dataclass

from ketch.model import OperationKind
from ketch.store.base import Tables

#: What may be queued, the stronger last.
QUEUEABLE = (OperationKind.FORCE_STOP, OperationKind.PURGE)


@dataclass(frozen=True)
class QueuedOp:
    """An operation waiting for the instance's host."""

    instance: str
    op: OperationKind
    queued: float  # when it was (first) queued


class QueueTable(Tables):
    """Queued operations, by instance."""

    def queue_op(self, instance: str, op: OperationKind, when: float) -> QueuedOp:
        """Queue ``op`` (a purge replaces a queued force-stop, never the other way round)."""
        if op not in QUEUEABLE:
            raise ValueError(f"{op} cannot be queued")
        with self._tx() as db:
            row = db.execute(
                "SELECT op, queued FROM queued WHERE instance = ?", (instance,)
            ).fetchone()
            if row is not None:
                old = OperationKind(row[0])
                if QUEUEABLE.index(old) >= QUEUEABLE.index(op):
                    return QueuedOp(instance, old, float(row[1]))
                when = float(row[1])
            db.execute(
                "INSERT OR REPLACE INTO queued (instance, op, queued) VALUES (?, ?, ?)",
                (instance, op.value, when),
            )
        return QueuedOp(instance, op, when)

    def queued_op(self, instance: str) -> QueuedOp | None:
        row = self._db.execute(
            "SELECT instance, op, queued FROM queued WHERE instance = ?", (instance,)
        ).fetchone()
        return None if row is None else QueuedOp(str(row[0]), OperationKind(row[1]), float(row[2]))

    def queued_ops(self) -> list[QueuedOp]:
        rows = self._db.execute(
            "SELECT instance, op, queued FROM queued ORDER BY queued"
        ).fetchall()
        return [QueuedOp(str(r[0]), OperationKind(r[1]), float(r[2])) for r in rows]

    def unqueue(self, instance: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM queued WHERE instance = ?", (instance,))
