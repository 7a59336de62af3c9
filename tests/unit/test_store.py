"""The SQLite store on a real database file: instances, journal, settings, migrations.

Every test opens a real file under ``tmp_path``; nothing is mocked.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ketch.errors import AlreadyExists, KetchError, NotFound
from ketch.model import (
    BootSpec,
    ForwardSpec,
    IdMap,
    InstanceSpec,
    Intent,
    MountSpec,
    MountType,
    Protocol,
)
from ketch.store.db import MIGRATIONS, Store, spec_from_json, spec_to_json


def make_spec(name: str = "vm1", **kw: object) -> InstanceSpec:
    base = InstanceSpec(
        name=name,
        image="tiny",
        image_id="ketch:tiny@20261126",
        release="ketch tiny 2026-11-26",
        cpus=2,
        memory=1024**3,
        disk=5 * 1024**3,
        boot=BootSpec(
            kernel="/vault/built/vmlinuz",
            initrd="/vault/built/initrd.img",
            cmdline="console=ttyS0 root=/dev/vda1",
        ),
        base_disk="/vault/built/tiny.qcow2",
        ssh_port=42001,
        mac="52:54:00:12:34:56",
        instance_id="i-0123456789",
        user="ubuntu",
        cloud_init="#cloud-config\npackages: [htop]\n# ünïcode ✓\n",
        created=1795670361.5,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ketch.db"  # the parent does not exist yet: Store makes it


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


# -- migrations ---------------------------------------------------------------------


def test_fresh_database_is_at_the_latest_schema(db_path: Path) -> None:
    s = Store(db_path)
    assert s.schema_version == len(MIGRATIONS)
    s.close()
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"instances", "journal", "settings"} <= tables


def test_reopening_keeps_data_and_version(db_path: Path) -> None:
    s = Store(db_path)
    s.add(make_spec(), Intent.RUN)
    s.close()
    again = Store(db_path)
    assert again.schema_version == len(MIGRATIONS)
    assert again.get("vm1").spec == make_spec()
    again.close()


def test_database_from_the_future_is_refused(db_path: Path) -> None:
    Store(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(KetchError) as err:
        Store(db_path)
    assert f"schema version {len(MIGRATIONS) + 1}" in err.value.message
    assert "newer than this ketch knows" in err.value.message
    assert err.value.hint == "upgrade ketch"


def test_file_that_is_not_a_database_is_refused_clearly(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not sqlite at all, just text " * 200)
    with pytest.raises(KetchError, match="cannot open the database") as err:
        Store(db_path)
    assert err.value.hint and "doctor" in err.value.hint


def test_database_is_in_wal_mode(store: Store, db_path: Path) -> None:
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- instances -----------------------------------------------------------------------


def test_add_then_get_round_trips_everything(store: Store) -> None:
    spec = make_spec()
    store.add(spec, Intent.RUN)
    rec = store.get("vm1")
    assert rec.spec == spec
    assert isinstance(rec.spec.boot, BootSpec)
    assert rec.intent is Intent.RUN
    assert rec.deleted is False
    assert rec.shutdown_at is None
    assert rec.quarantine is None


def test_spec_round_trip_firmware_boot(store: Store) -> None:
    spec = make_spec("uefi-vm", boot=BootSpec(firmware="uefi"), cloud_init=None)
    store.add(spec, Intent.STOP)
    got = store.get("uefi-vm").spec
    assert got.boot == BootSpec(kernel=None, initrd=None, cmdline=None, firmware="uefi")
    assert got.cloud_init is None


def test_spec_json_ignores_unknown_keys_and_defaults_boot() -> None:
    doc = json.loads(spec_to_json(make_spec()))
    doc["from_a_newer_ketch"] = 1
    del doc["boot"]
    got = spec_from_json(json.dumps(doc))
    assert got.boot == BootSpec()
    assert got.name == "vm1"


def test_spec_round_trip_mounts_and_forwards(store: Store) -> None:
    mounts = (
        MountSpec("/home/u/src", "/src", MountType.NATIVE, (IdMap(1000, None),), (IdMap(0, 0),)),
        MountSpec("/data", "/data"),
    )
    forwards = (ForwardSpec("127.0.0.1", 8080, 80), ForwardSpec("0.0.0.0", 53, 53, Protocol.UDP))
    store.add(make_spec("m", mounts=mounts, forwards=forwards), Intent.STOP)
    got = store.get("m").spec
    assert got.mounts == mounts
    assert got.forwards == forwards
    # a spec written before mounts and forwards existed reads back with none
    doc = json.loads(spec_to_json(make_spec()))
    del doc["mounts"], doc["forwards"]
    assert spec_from_json(json.dumps(doc)) == make_spec()


def test_spec_json_is_stable() -> None:
    assert spec_to_json(make_spec()) == spec_to_json(make_spec())
    assert spec_from_json(spec_to_json(make_spec())) == make_spec()


def test_duplicate_name_raises_already_exists_and_keeps_the_first(store: Store) -> None:
    store.add(make_spec(cpus=1), Intent.RUN)
    with pytest.raises(AlreadyExists, match='instance "vm1" already exists'):
        store.add(make_spec(cpus=4), Intent.STOP)
    rec = store.get("vm1")
    assert (rec.spec.cpus, rec.intent) == (1, Intent.RUN)
    store.add(make_spec("vm2"), Intent.RUN)  # the failed insert left no open transaction
    assert store.exists("vm2")


def test_get_unknown_is_not_found_with_multipass_wording(store: Store) -> None:
    with pytest.raises(NotFound) as err:
        store.get("ghost")
    assert err.value.message == 'instance "ghost" does not exist'
    assert err.value.code == "not-found"


def test_all_is_sorted_by_name(store: Store) -> None:
    for name in ("zeta", "alpha", "mid"):
        store.add(make_spec(name), Intent.RUN)
    assert [r.spec.name for r in store.all()] == ["alpha", "mid", "zeta"]


def test_all_on_empty_store(store: Store) -> None:
    assert store.all() == []
    assert store.used_ports() == set()


def test_exists_and_remove(store: Store) -> None:
    store.add(make_spec(), Intent.RUN)
    assert store.exists("vm1")
    store.remove("vm1")
    assert not store.exists("vm1")
    with pytest.raises(NotFound):
        store.get("vm1")
    store.remove("vm1")  # removing what is gone is a no-op
    store.add(make_spec(), Intent.STOP)  # the name is free again
    assert store.get("vm1").intent is Intent.STOP


def test_intents(store: Store) -> None:
    store.add(make_spec(), Intent.RUN)
    for intent in (Intent.SUSPEND, Intent.STOP, Intent.RUN):
        store.set_intent("vm1", intent)
        assert store.get("vm1").intent is intent


def test_deleted_flag(store: Store) -> None:
    store.add(make_spec(), Intent.RUN)
    store.set_deleted("vm1", True)
    assert store.get("vm1").deleted is True
    assert store.get("vm1").intent is Intent.RUN  # deleting keeps the intent
    store.set_deleted("vm1", False)
    assert store.get("vm1").deleted is False


def test_shutdown_at_set_and_cleared(store: Store) -> None:
    store.add(make_spec(), Intent.RUN)
    store.set_shutdown_at("vm1", 1795670999.25)
    assert store.get("vm1").shutdown_at == 1795670999.25
    store.set_shutdown_at("vm1", None)
    assert store.get("vm1").shutdown_at is None


def test_quarantine(store: Store) -> None:
    store.add(make_spec(), Intent.RUN)
    store.set_quarantine("vm1", "disk is corrupt")
    assert store.get("vm1").quarantine == "disk is corrupt"
    store.set_quarantine("vm1", None)
    assert store.get("vm1").quarantine is None


def test_set_spec_replaces_the_spec(store: Store) -> None:
    store.add(make_spec(), Intent.RUN)
    store.set_spec(make_spec(ssh_port=42999, boot=BootSpec(firmware="uefi")))
    got = store.get("vm1").spec
    assert got.ssh_port == 42999 and got.boot.firmware == "uefi"


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: s.set_intent("ghost", Intent.RUN), id="set_intent"),
        pytest.param(lambda s: s.set_deleted("ghost", True), id="set_deleted"),
        pytest.param(lambda s: s.set_shutdown_at("ghost", 1.0), id="set_shutdown_at"),
        pytest.param(lambda s: s.set_quarantine("ghost", "x"), id="set_quarantine"),
        pytest.param(lambda s: s.set_spec(make_spec("ghost")), id="set_spec"),
    ],
)
def test_updates_of_unknown_instances_are_not_found(store: Store, call: object) -> None:
    with pytest.raises(NotFound, match='instance "ghost" does not exist'):
        call(store)  # type: ignore[operator]
    assert not store.exists("ghost")


def test_used_ports(store: Store) -> None:
    store.add(make_spec("a", ssh_port=42001), Intent.RUN)
    store.add(make_spec("b", ssh_port=42002), Intent.STOP)
    assert store.used_ports() == {42001, 42002}


# -- journal ---------------------------------------------------------------------------


def test_journal_begin_step_finish(store: Store) -> None:
    entry = store.begin("vm1", "launch", "creating disk")
    (open_,) = store.unfinished()
    assert (open_.id, open_.instance, open_.op) == (entry, "vm1", "launch")
    assert open_.step == "creating disk"
    assert open_.finished is None and open_.outcome is None
    store.step(entry, "waiting for ssh")
    assert store.unfinished()[0].step == "waiting for ssh"
    store.finish(entry, "ok")
    assert store.unfinished() == []
    (done,) = store.history("vm1")
    assert done.outcome == "ok"
    assert done.finished is not None and done.finished >= done.started


def test_journal_ids_increase(store: Store) -> None:
    ids = [store.begin("vm1", "start") for _ in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_unfinished_across_instances_in_order(store: Store) -> None:
    a = store.begin("a", "start")
    b = store.begin("b", "stop")
    c = store.begin("a", "suspend")
    assert [e.id for e in store.unfinished()] == [a, b, c]
    store.finish(b, "failed")
    assert [(e.instance, e.op) for e in store.unfinished()] == [("a", "start"), ("a", "suspend")]


def test_finishing_supersedes_older_unfinished_on_the_same_instance(store: Store) -> None:
    old = store.begin("vm1", "start")  # e.g. interrupted by a crash
    other = store.begin("vm2", "start")
    new = store.begin("vm1", "force-stop")
    store.finish(new, "ok")
    assert [e.id for e in store.unfinished()] == [other]
    outcomes = {e.id: e.outcome for e in store.history("vm1")}
    assert outcomes == {old: "superseded", new: "ok"}


def test_finishing_an_old_entry_does_not_close_a_newer_one(store: Store) -> None:
    old = store.begin("vm1", "start")
    new = store.begin("vm1", "stop")
    store.finish(old, "failed")
    assert [e.id for e in store.unfinished()] == [new]


def test_finish_of_unknown_entry_changes_nothing(store: Store) -> None:
    entry = store.begin("vm1", "start")
    store.finish(entry + 1000, "ok")
    assert [e.id for e in store.unfinished()] == [entry]


def test_history_is_newest_first_and_limited(store: Store) -> None:
    ids = [store.begin("vm1", f"op{i}") for i in range(5)]
    store.begin("vm2", "other")
    assert [e.id for e in store.history("vm1", limit=3)] == ids[::-1][:3]
    assert store.history("nobody") == []


# -- settings -----------------------------------------------------------------------------


def test_settings_get_set_overwrite_delete(store: Store) -> None:
    assert store.get_setting("local.accel") is None
    store.set_setting("local.accel", "tcg")
    assert store.get_setting("local.accel") == "tcg"
    store.set_setting("local.accel", "kvm")
    assert store.get_setting("local.accel") == "kvm"
    store.set_setting("local.accel", None)
    assert store.get_setting("local.accel") is None
    store.set_setting("local.accel", None)  # deleting what is absent is fine


def test_settings_prefix_listing(store: Store) -> None:
    store.set_setting("local.remote.mirror", "https://m.example/streams")
    store.set_setting("local.remote.alpha", "file:///srv/streams")
    store.set_setting("local.accel", "tcg")
    store.set_setting("client.primary-name", "primary")
    assert store.settings("local.remote.") == [
        ("local.remote.alpha", "file:///srv/streams"),
        ("local.remote.mirror", "https://m.example/streams"),
    ]
    assert [k for k, _ in store.settings()] == [
        "client.primary-name",
        "local.accel",
        "local.remote.alpha",
        "local.remote.mirror",
    ]
    assert store.settings("nothing.") == []


def test_settings_prefix_is_literal_not_a_pattern(store: Store) -> None:
    store.set_setting("local.remote.a", "file:///a")
    store.set_setting("localXremote.b", "file:///b")
    assert store.settings("local%") == []
    assert store.settings("local_remote") == []
    assert [k for k, _ in store.settings("local.")] == ["local.remote.a"]


def test_setting_values_keep_unicode_and_empty(store: Store) -> None:
    store.set_setting("k", "")
    assert store.get_setting("k") == ""
    store.set_setting("k", "ünï ✓")
    assert store.get_setting("k") == "ünï ✓"


# -- two stores on one file (two processes, in effect) ---------------------------------------


def test_two_stores_see_each_others_writes(db_path: Path) -> None:
    one, two = Store(db_path), Store(db_path)
    try:
        one.add(make_spec("a"), Intent.RUN)
        assert two.get("a").spec == make_spec("a")
        two.set_intent("a", Intent.SUSPEND)
        assert one.get("a").intent is Intent.SUSPEND
        two.set_setting("local.accel", "tcg")
        assert one.get_setting("local.accel") == "tcg"
        entry = one.begin("a", "suspend")
        assert [e.id for e in two.unfinished()] == [entry]
        two.finish(entry, "ok")
        assert one.unfinished() == []
        with pytest.raises(AlreadyExists):
            two.add(make_spec("a"), Intent.STOP)
        one.remove("a")
        assert not two.exists("a")
    finally:
        one.close()
        two.close()
