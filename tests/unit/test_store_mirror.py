"""The database is never the only copy (issue 18 item 1): mirrors, and repair at start-up.

Real SQLite files under ``tmp_path``, damaged the ways a full disk or a bad
restore damages them; nothing is mocked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from db_damage import deleted, garbage_at_100, truncated_to_half
from test_store import make_spec

from ketch.layout import Root
from ketch.model import ForwardSpec, Intent, MountSpec
from ketch.store import mirror
from ketch.store.db import Store
from ketch.store.records import Record, SnapshotRecord
from ketch.store.repair import check, open_store


def snap(instance: str, name: str, parent: str | None = None) -> SnapshotRecord:
    return SnapshotRecord(instance, name, f"ketch-snap-{name}", "a comment", parent, 1.5, 2, 3, 4)


def populated(tmp_path: Path) -> Root:
    """A root with three instances (directories made first, as launch does) and snapshots."""
    root = Root(tmp_path / "root")
    store = Store(root.database)
    for name in ("alpha", "beta", "gamma"):
        root.instance(name).path.mkdir(parents=True)
    spec = make_spec(
        "alpha",
        mounts=(MountSpec(source="/srv/data", target="/data"),),
        forwards=(ForwardSpec(host_ip="127.0.0.1", host_port=8080, guest_port=80),),
    )
    store.add(spec, Intent.STOP)
    store.set_intent("alpha", Intent.RUN)
    store.add(make_spec("beta", ssh_port=42002), Intent.SUSPEND)
    store.set_quarantine("beta", "a reason")
    store.add(make_spec("gamma", ssh_port=42003), Intent.STOP)
    store.set_deleted("gamma", True)
    store.set_shutdown_at("gamma", 1234.5)
    store.add_snapshot(snap("alpha", "snap1"))
    store.add_snapshot(snap("alpha", "snap2", parent="snap1"))
    store.set_setting("local.driver", "qemu")
    store.close()
    return root


def state(
    store: Store,
) -> dict[str, tuple[Record, list[SnapshotRecord], str | None, int]]:
    """Everything the store knows of instances, comparable."""
    return {
        r.spec.name: (r, store.snapshots(r.spec.name), store.snapshot_head(r.spec.name),
                      store.snapshots_taken(r.spec.name))
        for r in store.all()
    }  # fmt: skip


def test_every_change_rewrites_the_mirror(tmp_path: Path) -> None:
    root = populated(tmp_path)
    store = Store(root.database)
    for name, (record, snaps, head, taken) in state(store).items():
        m = mirror.read(root.instance(name).path)
        assert m is not None
        assert m == mirror.Mirrored(record, tuple(snaps), head, taken)
    alpha = mirror.read(root.instance("alpha").path)
    assert alpha is not None and alpha.record.spec.mounts and alpha.record.spec.forwards
    store.set_spec(replace(store.get("alpha").spec, cpus=7))
    store.remove_snapshot("alpha", "snap2")
    alpha = mirror.read(root.instance("alpha").path)
    assert alpha is not None and alpha.record.spec.cpus == 7 and alpha.head == "snap1"
    assert os.stat(root.instance("alpha").record).st_mode & 0o777 == 0o600
    store.remove("beta")
    assert not root.instance("beta").record.exists()
    assert [p.name for p in root.instance("alpha").path.iterdir()] == ["instance.json"]


def test_no_directory_is_made_for_a_mirror(tmp_path: Path) -> None:
    store = Store(tmp_path / "ketch.db")
    store.add(make_spec("nodir"), Intent.STOP)
    assert not (tmp_path / "instances" / "nodir").exists()


def test_a_sound_database_is_left_alone(tmp_path: Path) -> None:
    root = populated(tmp_path)
    before = state(Store(root.database))
    store, rep = open_store(root)
    assert not rep and rep.lines() == []
    assert state(store) == before
    assert not root.database_repaired.exists()


@pytest.mark.parametrize("damage", [garbage_at_100, truncated_to_half, deleted])
def test_a_damaged_database_loses_no_instance(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    root = populated(tmp_path)
    before = state(Store(root.database))
    original = root.database.read_bytes()
    damage(root.database)
    if damage is not deleted:
        assert check(root.database) is not None
    store, rep = open_store(root)
    assert rep and rep.damage
    assert state(store) == before  # every instance, its full spec, snapshots, head
    assert check(root.database) is None
    kept = sorted(root.path.glob("ketch.db.damaged-*"))
    if damage is deleted:
        assert kept == [] and rep.kept is None
    else:  # moved aside, never deleted: the damaged bytes are all there
        assert [str(k) for k in kept if not k.name.endswith(("-wal", "-shm"))] == [rep.kept]
        assert len(Path(str(rep.kept)).read_bytes()) <= len(original)
    doc = json.loads(root.database_repaired.read_text())
    assert doc["lines"] == rep.lines() and any(
        "damaged" in x or "missing" in x for x in rep.lines()
    )
    store.close()
    again, rep2 = open_store(root)  # once repaired, it stays sound
    assert not rep2 and state(again) == before


def test_settings_come_back_from_their_mirror(tmp_path: Path) -> None:
    root = populated(tmp_path)
    garbage_at_100(root.database)
    store, rep = open_store(root)
    assert rep.damage
    # Settings come back from settings.json; instances from their mirrors.
    assert store.get_setting("local.driver") == "qemu"
    assert json.loads(root.settings_record.read_text()) == {"local.driver": "qemu"}
    assert {r.spec.name for r in store.all()} == {"alpha", "beta", "gamma"}


def test_an_old_backup_gets_the_instances_it_lacks(tmp_path: Path) -> None:
    root = populated(tmp_path)
    backup = root.database.read_bytes()
    store = Store(root.database)
    root.instance("delta").path.mkdir()
    store.add(make_spec("delta", ssh_port=42004), Intent.RUN)
    store.close()
    deleted(root.database)
    root.database.write_bytes(backup)  # restored from before delta was made
    store, rep = open_store(root)
    assert rep.damage is None and rep.rebuilt == ["delta"]
    assert store.get("delta").intent is Intent.RUN


def test_a_root_from_before_mirrors_gets_them(tmp_path: Path) -> None:
    root = populated(tmp_path)
    for name in ("alpha", "beta", "gamma"):
        root.instance(name).record.unlink()
    store, rep = open_store(root)
    assert not rep
    assert all(root.instance(n).record.exists() for n in ("alpha", "beta", "gamma"))
    assert store.get("alpha").intent is Intent.RUN


def test_an_unreadable_mirror_is_ignored(tmp_path: Path) -> None:
    d = tmp_path / "instances" / "x"
    d.mkdir(parents=True)
    (d / "instance.json").write_text("{not json")
    assert mirror.read_all(tmp_path / "instances") == {}
    (d / "instance.json").write_text(json.dumps({"format": 99}))
    assert mirror.read(d) is None
