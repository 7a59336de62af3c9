"""Opening the store at daemon start: a damaged database loses nothing (issue 18 item 1).

:func:`open_store` checks ``ketch.db`` before ketchd trusts it: it must open
and pass ``PRAGMA quick_check``.  One that does not is moved aside (with its
``-wal`` and ``-shm``) as ``ketch.db.damaged-<UTC time>``, never deleted; a
fresh database is made and filled with what can be salvaged from the damaged
one (SQLite's own ``.recover`` through the ``sqlite3`` program when it is
installed, else the rows each table still yields), and then every instance
whose directory holds its mirror (``instance.json``, :mod:`.mirror`) is put
back from it.  A database that is gone while mirrors exist is rebuilt the
same way, and a sound database that lacks a mirrored instance (an old backup
restored) gets it back.  What was done is written to
``ketch.db.repaired.json`` (:data:`ketch.layout.DATABASE_REPAIRED`) for the
first client and ``ketch doctor``, and returned as lines for the log.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ketch.errors import KetchError
from ketch.layout import DATABASE_DAMAGED, FILE_MODE, Root
from ketch.model import HostSpec
from ketch.store import mirror
from ketch.store.db import Store
from ketch.store.records import Record, spec_to_json
from ketch.store.settings import SettingsTable

TABLES = ("instances", "journal", "settings", "snapshots", "snapshot_heads", "hosts")
RECOVER_TIMEOUT = 120.0


@dataclass
class Repair:
    """What :func:`open_store` did; empty when the database was sound and complete."""

    damage: str | None = None  # why the database was not trusted
    kept: str | None = None  # where the damaged file was moved
    salvaged: dict[str, int] = field(default_factory=dict)  # rows per table
    salvage_error: str | None = None
    rebuilt: list[str] = field(default_factory=list)  # instances put back from their mirror
    when: str = ""

    def __bool__(self) -> bool:
        return self.damage is not None or bool(self.rebuilt)

    def lines(self) -> list[str]:
        """What to tell the user, one line each."""
        out = []
        if self.damage is not None:
            out.append(f"the database was damaged ({self.damage})")
        if self.kept:
            out.append(f"the damaged file is kept as {self.kept}")
        if self.damage is not None:
            rows = ", ".join(f"{n} {t}" for t, n in self.salvaged.items() if n) or "nothing"
            how = f" ({self.salvage_error})" if self.salvage_error else ""
            out.append(f"salvaged from it: {rows}{how}")
        if self.rebuilt:
            out.append(
                f"rebuilt from their instance.json: {', '.join(self.rebuilt)} "
                f"({len(self.rebuilt)} instance{'s' if len(self.rebuilt) != 1 else ''})"
            )
        return out

    def doc(self) -> dict[str, object]:
        return {
            "when": self.when,
            "damage": self.damage,
            "kept": self.kept,
            "salvaged": self.salvaged,
            "salvage_error": self.salvage_error,
            "rebuilt": self.rebuilt,
            "lines": self.lines(),
        }


def check(path: Path) -> str | None:
    """Why the database at ``path`` cannot be trusted, or None when it opens and checks ok."""
    try:
        db = sqlite3.connect(str(path), timeout=10.0)
    except sqlite3.Error as exc:
        return f"it does not open: {exc}"
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        return f"it does not open: {exc}"
    finally:
        db.close()
    if rows != [("ok",)]:
        return "PRAGMA quick_check: " + "; ".join(str(r[0]) for r in rows[:3])
    return None


def stamp(now: float) -> str:
    """A UTC time for file names, e.g. ``20261201T230142Z`` (pure)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def move_aside(path: Path, when: str) -> Path:
    """Move the database and its ``-wal``/``-shm`` to ``ketch.db.damaged-<when>``; never delete."""
    aside = path.with_name(DATABASE_DAMAGED + when)
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{DATABASE_DAMAGED}{when}.{n}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            os.replace(src, Path(str(aside) + suffix))
    return aside


def recover_argv(sqlite3_program: str, damaged: Path) -> list[str]:
    """``sqlite3 DAMAGED .recover``: SQL that rebuilds what can be read (pure)."""
    return [sqlite3_program, str(damaged), ".recover"]


def _recover_with_cli(damaged: Path, into: Path) -> str | None:
    """Run ``.recover`` into the database ``into``; why not, or None when it worked."""
    program = shutil.which("sqlite3")
    if program is None:
        return "the sqlite3 program is not installed: rows were read directly"
    try:
        done = subprocess.run(
            recover_argv(program, damaged),
            capture_output=True,
            timeout=RECOVER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sqlite3 .recover failed: {exc}"
    if not done.stdout:
        return f"sqlite3 .recover produced nothing: {done.stderr.decode(errors='replace')[:200]}"
    db = sqlite3.connect(str(into))
    try:
        db.executescript(done.stdout.decode(errors="replace"))
    except sqlite3.Error as exc:
        return f"sqlite3 .recover's output did not load: {exc}"
    finally:
        db.close()
    return None


def salvage(source: Path, store: Store) -> dict[str, int]:
    """Copy the rows each known table of ``source`` still yields into ``store``; counts."""
    counts: dict[str, int] = {}
    try:
        src = sqlite3.connect(str(source))
    except sqlite3.Error:
        return counts
    db = store._db
    try:
        for table in TABLES:
            cols = [str(r[1]) for r in db.execute(f"PRAGMA table_info({table})")]
            names = ", ".join(cols)
            marks = ", ".join("?" for _ in cols)
            n = 0
            try:
                cur = src.execute(f"SELECT {names} FROM {table}")
                while True:
                    try:
                        row = cur.fetchone()
                    except sqlite3.Error:
                        break
                    if row is None:
                        break
                    try:
                        db.execute(f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({marks})", row)
                        n += 1
                    except sqlite3.Error:
                        continue
            except sqlite3.Error:
                pass
            counts[table] = n
    finally:
        src.close()
    return counts


def put_back(store: Store, m: mirror.Mirrored, now: float) -> None:
    """Replace one instance's rows (and its snapshots') by what its mirror says."""
    r, name = m.record, m.record.spec.name
    with store._tx() as db:
        db.execute("DELETE FROM instances WHERE name = ?", (name,))
        db.execute("DELETE FROM snapshots WHERE instance = ?", (name,))
        db.execute("DELETE FROM snapshot_heads WHERE instance = ?", (name,))
        db.execute(
            "INSERT INTO instances (name, spec, intent, deleted, shutdown_at, quarantine,"
            " created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                spec_to_json(r.spec),
                r.intent.value,
                int(r.deleted),
                r.shutdown_at,
                r.quarantine,
                r.spec.created or now,
                now,
            ),
        )
        for s in m.snapshots:
            db.execute(
                "INSERT OR REPLACE INTO snapshots (instance, name, tag, comment, parent, created,"
                " cpus, memory, disk) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, s.name, s.tag, s.comment, s.parent, s.created, s.cpus, s.memory, s.disk),
            )
        if m.head is not None or m.taken:
            db.execute(
                "INSERT INTO snapshot_heads (instance, head, taken) VALUES (?, ?, ?)",
                (name, m.head, m.taken),
            )


def _put_back_hosts(store: Store, hosts: list[HostSpec]) -> None:
    """The hosts as their mirror tells them (it is at least as new as any salvaged row)."""
    with store._tx() as db:
        for h in hosts:
            db.execute(
                "INSERT OR REPLACE INTO hosts (name, uri, ssh_key, known_hosts, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (h.name, h.uri, h.ssh_key, h.known_hosts, h.created),
            )


def open_store(root: Root, now: Callable[[], float] = time.time) -> tuple[Store, Repair]:
    """The root's store, checked, repaired when damaged, completed from the mirrors."""
    path = root.database
    rep = Repair(when=stamp(now()))
    mirrors = mirror.read_all(root.instances)
    aside: Path | None = None
    if path.exists() and path.stat().st_size > 0:
        rep.damage = check(path)
        if rep.damage is not None:
            aside = move_aside(path, rep.when)
            rep.kept = str(aside)
    elif mirrors or mirror.read_hosts(root.hosts_record):
        rep.damage = "it is missing" if not path.exists() else "it is empty"
    try:
        store = Store(path)
    except KetchError as exc:
        if rep.damage is None:
            raise
        free = shutil.disk_usage(root.path).free // 2**20
        raise KetchError(
            f"the database was damaged ({rep.damage}) and a new one cannot be made: {exc.message}",
            hint=f"free some space in {root.path} ({free} MiB free) and run ketch again: "
            "nothing is lost (each instance's record is in its instance.json"
            + (f"; the damaged file is kept as {aside})" if aside else ")"),
        ) from exc
    if aside is not None:
        recovered = path.with_name(f".{path.name}.recovering-{os.getpid()}")
        try:
            rep.salvage_error = _recover_with_cli(aside, recovered)
            if rep.salvage_error is None:
                rep.salvaged = salvage(recovered, store)
            if not any(rep.salvaged.values()):  # .recover got nothing: read what rows still read
                rep.salvaged = salvage(aside, store)
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(recovered) + suffix).unlink(missing_ok=True)
    settings = mirror.read_settings(root.settings_record)
    if rep.damage is not None and settings:
        for key, value in settings.items():  # the mirror is at least as new as any salvaged row
            SettingsTable.set_setting(store, key, value)
        rep.salvaged["settings (from settings.json)"] = len(settings)
    if not root.settings_record.exists():
        store.mirror_settings()
    hosts = mirror.read_hosts(root.hosts_record)
    if rep.damage is not None and hosts:
        _put_back_hosts(store, hosts)
        rep.salvaged["hosts (from hosts.json)"] = len(hosts)
    if not root.hosts_record.exists():
        store.mirror_hosts()
    known = {r.spec.name for r in _readable(store)}
    for name, m in mirrors.items():
        if rep.damage is not None or name not in known:
            put_back(store, m, now())
            if name not in known:
                rep.rebuilt.append(name)
    for r in _readable(store):  # a root from before the mirrors gets them now
        if r.spec.name not in mirrors:
            store._mirror(r.spec.name)
    if rep:
        note = root.database_repaired
        fd = os.open(note, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "w") as f:
            json.dump(rep.doc(), f, indent=1)
    return store, rep


def _readable(store: Store) -> list[Record]:
    """The records that still read back (a salvaged row with a broken spec is skipped)."""
    out = []
    for (name,) in store._db.execute("SELECT name FROM instances").fetchall():
        try:
            out.append(store.get(str(name)))
        except (ValueError, KeyError, TypeError):
            continue
    return out
