"""What every table of the store shares: the connection and one write transaction.

:class:`Tables` is the base of the per-table mixins (``instances``,
``journal``, ``snapshots``, ``settings``) that :class:`~ketch.store.db.Store`
is made of; the connection is opened (and migrated) by ``Store`` itself.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from ketch.errors import KetchError


class Tables:
    """The connection the tables' methods use, and the one way they write."""

    _db: sqlite3.Connection

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
