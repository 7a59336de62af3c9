"""The database's schema: :data:`MIGRATIONS`, one SQL script per schema version.

The version a database is at lives in ``PRAGMA user_version``;
:class:`~ketch.store.db.Store` runs the scripts after it, one version at a
time, each in its own transaction.  A script is never changed once released:
a new version is a new script appended here.
"""

from __future__ import annotations

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
    # 3: the libvirt hosts (ketch host add); an instance's host is in its spec ("local")
    """
    CREATE TABLE hosts (
        name TEXT PRIMARY KEY,
        uri TEXT NOT NULL,
        ssh_key TEXT,
        known_hosts TEXT,
        created REAL NOT NULL
    );
    """,
    # 4: stop --force and delete --purge of an instance whose host did not answer, queued
    # until it does (service/queued.py); one per instance, a purge outranking a stop
    """
    CREATE TABLE queued (
        instance TEXT PRIMARY KEY,
        op TEXT NOT NULL,
        queued REAL NOT NULL
    );
    """,
)
