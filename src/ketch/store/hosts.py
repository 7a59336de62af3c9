"""The ``hosts`` table: the libvirt hosts added with ``ketch host add`` (``local`` is built in).

A row holds what the user gave (name, URI, SSH key path, known_hosts text) and when;
nothing observed (reachable or not, free memory) is ever stored.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from ketch.errors import AlreadyExists, NotFound
from ketch.model import HostSpec
from ketch.store.base import Tables

_COLUMNS = "name, uri, ssh_key, known_hosts, created"


def _host(row: tuple[Any, ...]) -> HostSpec:
    return HostSpec(
        name=str(row[0]),
        uri=str(row[1]),
        ssh_key=None if row[2] is None else str(row[2]),
        known_hosts=None if row[3] is None else str(row[3]),
        created=float(row[4]),
    )


class HostTable(Tables):
    """Hosts, by name."""

    def add_host(self, host: HostSpec) -> None:
        created = host.created or time.time()
        try:
            with self._tx() as db:
                db.execute(
                    f"INSERT INTO hosts ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                    (host.name, host.uri, host.ssh_key, host.known_hosts, created),
                )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(
                f'host "{host.name}" already exists',
                hint=f"'ketch host remove {host.name}' first, or choose another name",
            ) from exc

    def get_host(self, name: str) -> HostSpec:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM hosts WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f'host "{name}" does not exist', hint="see 'ketch host list'")
        return _host(row)

    def hosts(self) -> list[HostSpec]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM hosts ORDER BY name").fetchall()
        return [_host(r) for r in rows]

    def remove_host(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM hosts WHERE name = ?", (name,))
