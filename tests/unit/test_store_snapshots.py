"""Snapshot metadata in the SQLite store: migration 2, parents, heads, counts, removal.

Real database files under ``tmp_path``; nothing is mocked.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_store import make_spec

from ketch.errors import AlreadyExists, NotFound
from ketch.model import Intent
from ketch.store.db import MIGRATIONS, SnapshotRecord, Store, spec_to_json


def snap(
    name: str, instance: str = "vm1", parent: str | None = None, created: float = 0.0
) -> SnapshotRecord:
    return SnapshotRecord(
        instance=instance,
        name=name,
        tag=f"ketch-snap-{instance}-{name}",
        comment=f"comment of {name}",
        parent=parent,
        created=created,
        cpus=2,
        memory=1024**3,
        disk=5 * 1024**3,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "ketch.db")
    s.add(make_spec("vm1"), Intent.STOP)
    s.add(make_spec("vm2"), Intent.STOP)
    yield s
    s.close()


def test_a_version_1_database_is_migrated_and_keeps_its_instances(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as raw:  # a database as the first ketch left it
        raw.executescript(MIGRATIONS[0])
        raw.execute("PRAGMA user_version = 1")
    assert len(MIGRATIONS) >= 2
    with sqlite3.connect(path) as raw:
        raw.execute(
            "INSERT INTO instances (name, spec, intent, created, updated)"
            " VALUES ('old', ?, 'stop', 0, 0)",
            (spec_to_json(make_spec("old")),),
        )
    s = Store(path)
    try:
        assert s.schema_version == len(MIGRATIONS)
        assert s.get("old").spec == make_spec("old")
        assert s.snapshots("old") == []
        s.add_snapshot(snap("s1", "old"))
        assert [r.name for r in s.snapshots("old")] == ["s1"]
    finally:
        s.close()


def test_add_get_and_list_round_trip(store: Store) -> None:
    store.add_snapshot(snap("snapshot1", created=1.0))
    store.add_snapshot(snap("snapshot2", parent="snapshot1", created=2.0))
    store.add_snapshot(snap("other", "vm2", created=0.5))
    assert store.get_snapshot("vm1", "snapshot2") == snap(
        "snapshot2", parent="snapshot1", created=2.0
    )
    assert [r.name for r in store.snapshots("vm1")] == ["snapshot1", "snapshot2"]
    assert [(r.instance, r.name) for r in store.snapshots()] == [
        ("vm1", "snapshot1"),
        ("vm1", "snapshot2"),
        ("vm2", "other"),
    ]
    assert store.snapshot_by_tag("ketch-snap-vm2-other") == snap("other", "vm2", created=0.5)
    assert store.snapshot_by_tag("suspend") is None
    assert store.snapshot_counts() == {"vm1": 2, "vm2": 1}


def test_unknown_snapshot_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match=r'snapshot "vm1\.ghost" does not exist'):
        store.get_snapshot("vm1", "ghost")


def test_duplicate_name_or_tag_is_refused_and_changes_nothing(store: Store) -> None:
    store.add_snapshot(snap("s1"))
    with pytest.raises(AlreadyExists, match=r'snapshot "vm1\.s1" already exists'):
        store.add_snapshot(snap("s1"))
    clash = SnapshotRecord(**{**snap("s2").__dict__, "tag": snap("s1").tag})
    with pytest.raises(AlreadyExists):
        store.add_snapshot(clash)
    assert [r.name for r in store.snapshots("vm1")] == ["s1"]
    assert store.snapshots_taken("vm1") == 1
    assert store.snapshot_head("vm1") == "s1"


def test_the_same_name_on_two_instances_is_fine(store: Store) -> None:
    store.add_snapshot(snap("snapshot1", "vm1"))
    store.add_snapshot(snap("snapshot1", "vm2"))
    assert store.get_snapshot("vm2", "snapshot1").instance == "vm2"


def test_head_and_taken_follow_adds_and_explicit_heads(store: Store) -> None:
    assert store.snapshot_head("vm1") is None and store.snapshots_taken("vm1") == 0
    store.add_snapshot(snap("a"))
    store.add_snapshot(snap("b", parent="a"))
    assert store.snapshot_head("vm1") == "b" and store.snapshots_taken("vm1") == 2
    store.set_snapshot_head("vm1", "a")  # a restore
    assert store.snapshot_head("vm1") == "a"
    assert store.snapshots_taken("vm1") == 2
    store.set_snapshot_head("vm2", None)
    assert store.snapshot_head("vm2") is None and store.snapshots_taken("vm2") == 0


def test_removing_reparents_children_and_moves_the_head(store: Store) -> None:
    store.add_snapshot(snap("a", created=1))
    store.add_snapshot(snap("b", parent="a", created=2))
    store.add_snapshot(snap("c", parent="b", created=3))
    store.add_snapshot(snap("d", parent="b", created=4))  # head is d
    store.set_snapshot_head("vm1", "b")
    store.remove_snapshot("vm1", "b")
    parents = {r.name: r.parent for r in store.snapshots("vm1")}
    assert parents == {"a": None, "c": "a", "d": "a"}
    assert store.snapshot_head("vm1") == "a"
    store.remove_snapshot("vm1", "a")
    assert {r.name: r.parent for r in store.snapshots("vm1")} == {"c": None, "d": None}
    assert store.snapshot_head("vm1") is None
    assert store.snapshots_taken("vm1") == 4  # names are not reused after deletions
    store.remove_snapshot("vm1", "a")  # what is gone is a no-op


def test_removing_an_instance_forgets_its_snapshots_only(store: Store) -> None:
    store.add_snapshot(snap("s1", "vm1"))
    store.add_snapshot(snap("s1", "vm2"))
    store.remove("vm1")
    assert store.snapshots("vm1") == []
    assert store.snapshot_head("vm1") is None and store.snapshots_taken("vm1") == 0
    assert [r.instance for r in store.snapshots()] == ["vm2"]
    store.add(make_spec("vm1"), Intent.STOP)  # a new instance of that name starts afresh
    assert store.snapshots("vm1") == []
