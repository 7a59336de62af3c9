"""Snapshots, clones, instance settings and crash recovery, below the daemon.

The pure parts (names, tags, mismatches, setting plans) are checked directly.
The use cases run for real on small qcow2 files with the real QEMU driver and
a real store, with no QEMU process: an instance with a disk and no pid file is
Stopped, which is all snapshots, clones and settings need.  "Crashes" are
journal entries left unfinished at a chosen step, as a killed ketchd leaves them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fakes import FakeImages

from ketch.api import models as m
from ketch.errors import AlreadyExists, InvalidArgument, InvalidState, KetchError, NotFound
from ketch.host import qemu_img
from ketch.layout import Root
from ketch.model import BootSpec, InstanceSpec, Intent
from ketch.progress import ListReporter
from ketch.runtime.driver import SUSPEND_TAG
from ketch.runtime.qemu_driver import QemuDriver
from ketch.service import clone, guestlink, recovery, settings, snapshots
from ketch.service.context import Context
from ketch.service.snapshots import default_name, snapshot_mismatches, validate_name
from ketch.store.db import Store

MiB = 1024**2
T = TypeVar("T")

needs_qemu_img = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="qemu-img/qemu-io not installed",
)


# -- pure parts -------------------------------------------------------------------------------


def test_mismatches_lists_orphan_tags_and_records_without_tags() -> None:
    tags = ["ketch-snap-a", SUSPEND_TAG, "ketch-snap-b", "someones-own"]
    recorded = ["ketch-snap-b", "ketch-snap-gone", "ketch-snap-c"]
    assert snapshot_mismatches(tags, recorded) == (
        ["ketch-snap-a", "someones-own"],
        ["ketch-snap-gone", "ketch-snap-c"],
    )


def test_mismatches_suspend_tag_is_never_an_orphan_and_duplicates_collapse() -> None:
    assert snapshot_mismatches([SUSPEND_TAG], []) == ([], [])
    assert snapshot_mismatches(["x", "x"], ["y", "y"]) == (["x"], ["y"])
    assert snapshot_mismatches(["a", "b"], ["b", "a"]) == ([], [])
    assert snapshot_mismatches([], []) == ([], [])


def test_default_snapshot_names_count_every_snapshot_ever_taken() -> None:
    assert default_name(0, set()) == "snapshot1"
    assert default_name(2, {"snapshot1"}) == "snapshot3"  # snapshot2 was deleted: not reused
    assert default_name(2, {"snapshot3", "snapshot4"}) == "snapshot5"


def test_tags_are_fresh_and_cannot_be_the_suspend_tag() -> None:
    tags = {snapshots.new_tag() for _ in range(100)}
    assert len(tags) == 100
    assert all(t.startswith("ketch-snap-") and t != SUSPEND_TAG for t in tags)


@pytest.mark.parametrize("name", ["snapshot1", "before-upgrade", "A", "x" * 63])
def test_valid_snapshot_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["a.b", "1st", "-x", "x-", "with space", "x" * 64, "ünï", ""])
def test_invalid_snapshot_names(name: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_name(name)
    assert err.value.hint


def test_default_clone_names() -> None:
    assert clone.default_name("web", set()) == "web-clone1"
    assert clone.default_name("web", {"web-clone1", "web-clone3"}) == "web-clone2"
    with pytest.raises(InvalidArgument, match="not a valid instance name") as err:
        clone.default_name("x" * 60, set())
    assert err.value.hint is not None and "--name" in err.value.hint


def test_instance_keys() -> None:
    assert settings.instance_key("local.web.cpus") == ("web", "cpus")
    assert settings.instance_key("local.web.memory") == ("web", "memory")
    assert settings.instance_key("local.web.disk") == ("web", "disk")
    assert settings.instance_key("local.web.bridged") == ("web", "bridged")  # service/bridged.py
    for key in ("local.driver", "client.web.cpus", "local..cpus", "a.b.c.d"):
        assert settings.instance_key(key) is None


def spec(**kw: object) -> InstanceSpec:
    base = InstanceSpec(
        name="vm",
        image="tiny",
        image_id="ketch:tiny@1",
        release="ketch tiny",
        cpus=1,
        memory=512 * MiB,
        disk=64 * MiB,
        boot=BootSpec(),
        base_disk="/nonexistent/base.qcow2",
        ssh_port=42001,
        mac="52:54:00:00:00:01",
        instance_id="i-vm",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prop", "value", "want"),
    [
        ("cpus", "2", {"cpus": 2}),
        ("cpus", " 64 ", {"cpus": 64}),
        ("memory", "512M", {"memory": 512 * MiB}),
        ("memory", "2G", {"memory": 2048 * MiB}),
        ("memory", "1.0GiB", {"memory": 1024 * MiB}),  # what ketch get prints reads back
        ("disk", "128M", {"disk": 128 * MiB}),
        ("disk", "100000000", {"disk": 100000256}),  # rounded up to whole sectors
    ],
)
def test_plan_accepts(prop: str, value: str, want: dict[str, int]) -> None:
    assert settings.plan_instance_change(spec(), prop, value, disk_now=64 * MiB) == spec(**want)


def test_plan_same_disk_size_changes_nothing() -> None:
    assert settings.plan_instance_change(spec(), "disk", "64M", disk_now=64 * MiB) == spec()


def test_plan_what_get_shows_sets_back_as_no_change() -> None:
    """``get`` rounds (5.3GiB); setting that text back must not read as shrinking."""
    odd = spec(disk=5_700_000_256, memory=1_400_000_000)
    shown_disk = settings.show(odd, "disk")
    shown_memory = settings.show(odd, "memory")
    assert (shown_disk, shown_memory) == ("5.3GiB", "1.3GiB")
    assert settings.plan_instance_change(odd, "disk", shown_disk, disk_now=odd.disk) == odd
    assert settings.plan_instance_change(odd, "memory", shown_memory, disk_now=odd.disk) == odd
    with pytest.raises(InvalidArgument, match="smaller"):
        settings.plan_instance_change(odd, "disk", "5.2GiB", disk_now=odd.disk)


@pytest.mark.parametrize(
    ("prop", "value", "words"),
    [
        ("cpus", "0", "invalid number of CPUs '0'"),
        ("cpus", "65", "invalid number of CPUs '65'"),
        ("cpus", "two", "invalid number of CPUs 'two'"),
        ("cpus", "1.5", "invalid number of CPUs '1.5'"),
        ("cpus", "-1", "invalid number of CPUs '-1'"),
        ("memory", "511M", "below the minimum of 512M"),
        ("memory", "lots", "lots is not a valid memory size - need"),
        ("disk", "32M", "smaller than the current 64.0MiB"),
        ("disk", "63M", "smaller than the current"),
        ("disk", "big", "big is not a valid memory size - need"),
    ],
)
def test_plan_refuses(prop: str, value: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words) as err:
        settings.plan_instance_change(spec(), prop, value, disk_now=64 * MiB)
    assert err.value.hint and err.value.exit_code == 1


def test_plan_compares_the_disk_with_its_real_size_too() -> None:
    """A disk made larger than asked (a large base image) cannot shrink to the spec's size."""
    with pytest.raises(InvalidArgument, match=r"smaller than the current 128\.0MiB"):
        settings.plan_instance_change(spec(), "disk", "100M", disk_now=128 * MiB)


def test_show() -> None:
    s = spec(cpus=3, memory=1024 * MiB, disk=5 * 1024 * MiB)
    assert [settings.show(s, p) for p in settings.INSTANCE_PROPS] == ["3", "1.0GiB", "5.0GiB"]


# -- use cases on real qcow2 files ----------------------------------------------------------


def qi(*args: str) -> str:
    return subprocess.run(
        ["qemu-img", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def write(disk: Path, pattern: int, offset: str = "1M", length: str = "64k") -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {length}", str(disk)],
        check=True,
        capture_output=True,
        timeout=60,
    )


def holds(disk: Path, pattern: int, offset: str = "1M", length: str = "64k") -> bool:
    done = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern:#x} {offset} {length}", str(disk)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode == 0 and "verification failed" not in done.stdout


def vsize(disk: Path) -> int:
    return int(json.loads(qi("info", "--output=json", "-U", str(disk)))["virtual-size"])


class World:
    """A storage root with a base image and instances whose disks are overlays on it."""

    def __init__(self, tmp: Path) -> None:
        self.root = Root(tmp / "root")
        self.root.path.mkdir()
        self.store = Store(self.root.database)
        self.ctx = Context(self.root, self.store, QemuDriver(), FakeImages())
        self.base = tmp / "base.qcow2"
        qi("create", "-q", "-f", "qcow2", str(self.base), "64M")
        write(self.base, 0xAA, "0", "1M")

    def add(self, name: str, **kw: object) -> Path:
        idir = self.root.instance(name)
        idir.path.mkdir(parents=True)
        disk = idir.disk
        qi("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.base), str(disk), "64M")
        self.store.add(spec(name=name, base_disk=str(self.base), **kw), Intent.STOP)
        return disk

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run(coro)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.store.close()


@needs_qemu_img
def test_take_and_restore_bring_back_data_size_and_resources(world: World) -> None:
    disk = world.add("vm")
    write(disk, 0x11)
    rep = ListReporter()
    got = world.run(snapshots.take(world.ctx, "vm", None, "first", rep))
    assert got == m.SnapshotResult(name="vm", snapshot="snapshot1")
    (meta,) = world.store.snapshots("vm")
    assert meta.tag.startswith("ketch-snap-") and meta.comment == "first" and meta.parent is None
    assert qemu_img.read_snapshot_names(disk) == (meta.tag,)
    assert (meta.cpus, meta.memory, meta.disk) == (1, 512 * MiB, 64 * MiB)

    write(disk, 0x22)  # after the snapshot: data, size and resources all change
    world.run(settings.set_instance(world.ctx, "vm", "disk", "96M", rep))
    world.run(settings.set_instance(world.ctx, "vm", "cpus", "2", rep))
    world.run(settings.set_instance(world.ctx, "vm", "memory", "1G", rep))
    assert vsize(disk) == 96 * MiB
    second = world.run(snapshots.take(world.ctx, "vm", "later", "", rep))
    assert second == m.SnapshotResult(name="vm", snapshot="later")
    assert world.store.get_snapshot("vm", "later").parent == "snapshot1"

    back = world.run(
        snapshots.restore(world.ctx, "vm", "snapshot1", snapshot_first=False, reporter=rep)
    )
    assert back == m.RestoreResult(name="vm", snapshot="snapshot1", saved=None)
    assert holds(disk, 0x11) and not holds(disk, 0x22)
    assert vsize(disk) == 64 * MiB
    restored = world.store.get("vm").spec
    assert (restored.cpus, restored.memory, restored.disk) == (1, 512 * MiB, 64 * MiB)
    assert world.store.snapshot_head("vm") == "snapshot1"
    assert [e.outcome for e in world.store.history("vm")][:1] == ["ok"]
    assert world.store.unfinished() == []


@needs_qemu_img
def test_restore_can_snapshot_the_current_state_first(world: World) -> None:
    disk = world.add("vm")
    rep = ListReporter()
    world.run(snapshots.take(world.ctx, "vm", None, "", rep))
    write(disk, 0x33)
    got = world.run(
        snapshots.restore(world.ctx, "vm", "snapshot1", snapshot_first=True, reporter=rep)
    )
    assert got.saved == "snapshot2"
    saved = world.store.get_snapshot("vm", "snapshot2")
    assert saved.comment == "Before restoring snapshot1" and saved.parent == "snapshot1"
    assert not holds(disk, 0x33)
    world.run(snapshots.restore(world.ctx, "vm", "snapshot2", snapshot_first=False, reporter=rep))
    assert holds(disk, 0x33)  # the saved state is really there


@needs_qemu_img
def test_a_user_may_name_a_snapshot_suspend(world: World) -> None:
    disk = world.add("vm")
    world.run(snapshots.take(world.ctx, "vm", "suspend", "", ListReporter()))
    assert SUSPEND_TAG not in qemu_img.read_snapshot_names(disk)
    obs = world.run(world.ctx.driver.observe(world.store.get("vm").spec, world.root.instance("vm")))
    assert obs.suspend_tag is False  # nobody mistakes it for a suspended VM


@needs_qemu_img
def test_take_refuses_duplicates_and_bad_names_and_leaves_no_tag(world: World) -> None:
    disk = world.add("vm")
    world.run(snapshots.take(world.ctx, "vm", "one", "", ListReporter()))
    with pytest.raises(AlreadyExists, match=r"Snapshot already exists: vm\.one"):
        world.run(snapshots.take(world.ctx, "vm", "one", "", ListReporter()))
    with pytest.raises(InvalidArgument):
        world.run(snapshots.take(world.ctx, "vm", "a.b", "", ListReporter()))
    assert len(qemu_img.read_snapshot_names(disk)) == 1


@needs_qemu_img
def test_a_failed_take_removes_its_tag(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record cannot be written (another record holds the tag): the new tag goes again."""
    disk = world.add("vm")
    world.run(snapshots.take(world.ctx, "vm", "one", "", ListReporter()))
    (first,) = world.store.snapshots("vm")
    clash = first.tag + "-x"
    world.store.add_snapshot(replace(first, instance="elsewhere", tag=clash))
    monkeypatch.setattr(snapshots, "new_tag", lambda: clash)
    with pytest.raises(AlreadyExists):
        world.run(snapshots.take(world.ctx, "vm", "two", "", ListReporter()))
    assert qemu_img.read_snapshot_names(disk) == (first.tag,)
    assert [s.name for s in world.store.snapshots("vm")] == ["one"]
    assert world.store.history("vm")[0].outcome == "failed"


@needs_qemu_img
def test_restore_of_a_snapshot_whose_tag_is_gone_is_refused(world: World) -> None:
    disk = world.add("vm")
    world.run(snapshots.take(world.ctx, "vm", None, "", ListReporter()))
    (meta,) = world.store.snapshots("vm")
    qi("snapshot", "-d", meta.tag, str(disk))
    with pytest.raises(KetchError, match="is not in the disk") as err:
        world.run(
            snapshots.restore(
                world.ctx, "vm", "snapshot1", snapshot_first=False, reporter=ListReporter()
            )
        )
    assert err.value.hint is not None and "delete --purge vm.snapshot1" in err.value.hint
    assert snapshot_mismatches(qemu_img.read_snapshot_names(disk), [meta.tag]) == ([], [meta.tag])
    # deleting it still works, and says the tag was already gone
    rep = ListReporter()
    world.run(snapshots.delete(world.ctx, "vm", "snapshot1", rep))
    assert world.store.snapshots("vm") == [] and "already gone" in rep.warnings[0]


@needs_qemu_img
def test_delete_reparents_and_removes_the_tag(world: World) -> None:
    disk = world.add("vm")
    for _ in range(3):
        world.run(snapshots.take(world.ctx, "vm", None, "", ListReporter()))
    world.run(snapshots.delete(world.ctx, "vm", "snapshot2", ListReporter()))
    assert {s.name: s.parent for s in world.store.snapshots("vm")} == {
        "snapshot1": None,
        "snapshot3": "snapshot1",
    }
    recorded = [s.tag for s in world.store.snapshots("vm")]
    assert snapshot_mismatches(qemu_img.read_snapshot_names(disk), recorded) == ([], [])
    with pytest.raises(NotFound, match=r'"vm\.snapshot2" does not exist'):
        world.run(snapshots.delete(world.ctx, "vm", "snapshot2", ListReporter()))


@needs_qemu_img
def claim_vm_state(disk: Path, tag: str) -> None:
    """Mark an internal snapshot as holding VM state (qemu-img makes disk-only ones).

    Writes a non-zero state size into the qcow2 snapshot table entry (both the
    32-bit field and v3's 64-bit one in the extra data); nothing loads it here.
    """
    import struct

    with disk.open("r+b") as f:
        header = f.read(72)
        count, offset = struct.unpack(">IQ", header[60:72])
        for _ in range(count):
            f.seek(offset)
            fixed = f.read(40)
            id_size, name_size = struct.unpack(">HH", fixed[12:16])
            extra_size = struct.unpack(">I", fixed[36:40])[0]
            f.seek(offset + 40 + extra_size + id_size)
            if f.read(name_size).decode() == tag:
                f.seek(offset + 32)
                f.write(struct.pack(">I", 1))
                if extra_size >= 8:
                    f.seek(offset + 40)
                    f.write(struct.pack(">Q", 1))
                return
            offset += (40 + extra_size + id_size + name_size + 7) & ~7
    raise AssertionError(f"no tag {tag} in {disk}")


def test_suspended_instances_refuse_snapshots_restores_and_settings(world: World) -> None:
    disk = world.add("vm")
    world.run(snapshots.take(world.ctx, "vm", None, "", ListReporter()))
    qi("snapshot", "-c", SUSPEND_TAG, str(disk))
    claim_vm_state(disk, SUSPEND_TAG)  # as if QEMU had saved a VM there
    world.store.set_intent("vm", Intent.SUSPEND)
    for call in (
        snapshots.take(world.ctx, "vm", None, "", ListReporter()),
        snapshots.restore(
            world.ctx, "vm", "snapshot1", snapshot_first=False, reporter=ListReporter()
        ),
        settings.set_instance(world.ctx, "vm", "cpus", "2", ListReporter()),
        clone.clone(world.ctx, "vm", "copy", ListReporter()),
    ):
        with pytest.raises(InvalidState, match="it is Suspended") as err:
            world.run(call)
        assert err.value.hint and "stop --force vm" in err.value.hint
    with pytest.raises(InvalidState) as err:
        world.run(settings.set_instance(world.ctx, "vm", "memory", "1G", ListReporter()))
    assert err.value.hint is not None and "Size mismatch" in err.value.hint
    assert world.store.get("vm").spec == spec(name="vm", base_disk=str(world.base))
    assert len(world.store.snapshots("vm")) == 1 and not world.root.instance("copy").path.exists()
    # deleting a snapshot is fine while suspended: the suspend tag stays
    world.run(snapshots.delete(world.ctx, "vm", "snapshot1", ListReporter()))
    assert qemu_img.read_snapshot_names(disk) == (SUSPEND_TAG,)


@needs_qemu_img
def test_refused_settings_change_nothing(world: World) -> None:
    disk = world.add("vm")
    before = world.store.get("vm").spec
    for prop, value in (("disk", "32M"), ("memory", "128M"), ("cpus", "0")):
        with pytest.raises(InvalidArgument):
            world.run(settings.set_instance(world.ctx, "vm", prop, value, ListReporter()))
    assert world.store.get("vm").spec == before and vsize(disk) == 64 * MiB
    assert world.store.history("vm") == []  # nothing was even begun


# -- clone ------------------------------------------------------------------------------------


@needs_qemu_img
def test_clone_is_independent_has_new_identity_and_no_tags(world: World) -> None:
    src = world.add("src", cloud_init="#cloud-config\nruncmd: [[touch, /x]]\n")
    guestlink.make_host_key(world.root.instance("src"), "src")
    write(src, 0x44)
    world.run(snapshots.take(world.ctx, "src", None, "", ListReporter()))
    qi("snapshot", "-c", SUSPEND_TAG, str(src))  # a stray tag: never copied either
    got = world.run(clone.clone(world.ctx, "src", "src-clone1", ListReporter()))
    assert got == m.CloneResult(name="src-clone1", source="src")
    a, b = world.store.get("src").spec, world.store.get("src-clone1").spec
    assert b.instance_id != a.instance_id and b.mac != a.mac and b.ssh_port != a.ssh_port
    assert (b.cpus, b.memory, b.disk, b.image_id, b.cloud_init) == (
        a.cpus, a.memory, a.disk, a.image_id, a.cloud_init,
    )  # fmt: skip
    cdir = world.root.instance("src-clone1")
    assert qemu_img.read_snapshot_names(cdir.disk) == ()
    assert world.store.snapshots("src-clone1") == []
    info = qemu_img.parse_info(qi("info", "--output=json", str(cdir.disk)))
    assert info.backing == str(world.base)
    assert cdir.seed_iso.exists() and cdir.known_hosts.read_text().startswith("src-clone1 ")
    assert cdir.host_key.read_text() != world.root.instance("src").host_key.read_text()
    # independent of the source's disk: it survives the source's removal
    shutil.rmtree(world.root.instance("src").path)
    assert holds(cdir.disk, 0x44) and holds(cdir.disk, 0xAA, "0", "64k")
    assert world.store.unfinished() == []


@needs_qemu_img
def test_a_failed_clone_leaves_nothing_behind(world: World, tmp_path: Path) -> None:
    src = world.add("src")
    broken = tmp_path / "broken-base.qcow2"
    broken.write_bytes(b"not a qcow2 at all" * 100)
    qi("rebase", "-u", "-F", "qcow2", "-b", str(broken), str(src))  # convert will fail on it
    with pytest.raises(KetchError):
        world.run(clone.clone(world.ctx, "src", "copy", ListReporter()))
    assert not world.root.instance("copy").path.exists()
    assert not world.store.exists("copy")
    assert world.store.history("copy")[0].outcome == "failed"


@needs_qemu_img
def test_clone_refuses_taken_names_and_stray_directories(world: World) -> None:
    world.add("src")
    world.add("other")
    with pytest.raises(AlreadyExists):
        world.run(clone.clone(world.ctx, "src", "other", ListReporter()))
    world.root.instance("stray").path.mkdir(parents=True)
    (world.root.instance("stray").path / "keep").write_text("not ketch's")
    with pytest.raises(AlreadyExists, match="in the way"):
        world.run(clone.clone(world.ctx, "src", "stray", ListReporter()))
    assert (world.root.instance("stray").path / "keep").read_text() == "not ketch's"
    assert not world.store.exists("stray")


# -- recovery after a crash (service/recovery.py, as ketchd runs it at start-up) ---------------


def recover(world: World) -> list[str]:
    return world.run(recovery.recover_all(world.ctx, ListReporter()))


@needs_qemu_img
def test_recovery_rolls_back_a_snapshot_whose_record_was_never_written(world: World) -> None:
    disk = world.add("vm")
    tag = snapshots.new_tag()
    world.store.begin("vm", "snapshot", f"create-tag {tag}")
    qi("snapshot", "-c", tag, str(disk))  # the crash came before the record
    assert recover(world) == [
        f"snapshot on vm: snapshot rolled back: its unrecorded tag {tag} was removed"
    ]
    assert qemu_img.read_snapshot_names(disk) == ()
    assert world.store.unfinished() == []
    assert world.store.history("vm")[0].outcome == "recovered"


@needs_qemu_img
def test_recovery_keeps_a_snapshot_whose_record_was_written(world: World) -> None:
    disk = world.add("vm")
    world.run(snapshots.take(world.ctx, "vm", None, "", ListReporter()))
    (meta,) = world.store.snapshots("vm")
    world.store.begin("vm", "snapshot", f"record {meta.tag}")  # crashed before finishing
    assert recover(world) == ["snapshot on vm: snapshot finished: it was recorded"]
    assert qemu_img.read_snapshot_names(disk) == (meta.tag,)
    assert world.store.unfinished() == []


@needs_qemu_img
def test_recovery_finishes_a_restore(world: World) -> None:
    disk = world.add("vm")
    write(disk, 0x55)
    world.run(snapshots.take(world.ctx, "vm", None, "", ListReporter()))
    (meta,) = world.store.snapshots("vm")
    write(disk, 0x66)
    world.store.set_spec(replace(world.store.get("vm").spec, cpus=4))
    world.store.set_snapshot_head("vm", None)
    world.store.begin("vm", "restore", f"apply {meta.tag}")
    assert recover(world) == ["restore on vm: restore finished: the disk is at snapshot snapshot1"]
    assert holds(disk, 0x55)
    assert world.store.get("vm").spec.cpus == 1 and world.store.snapshot_head("vm") == "snapshot1"


@needs_qemu_img
def test_recovery_finishes_a_snapshot_deletion(world: World) -> None:
    disk = world.add("vm")
    world.run(snapshots.take(world.ctx, "vm", None, "", ListReporter()))
    (meta,) = world.store.snapshots("vm")
    world.store.begin("vm", "delete-snapshot", f"delete-tag {meta.tag}")
    assert recover(world) == ["delete-snapshot on vm: snapshot deletion finished"]
    assert qemu_img.read_snapshot_names(disk) == () and world.store.snapshots("vm") == []


@needs_qemu_img
def test_recovery_removes_a_half_made_clone(world: World) -> None:
    world.add("src")
    world.store.begin("half", "clone", "copy-disk")
    world.add("half")  # directory, disk and record exist; the seed was never written
    assert recover(world) == [
        "clone on half: clone rolled back: the half-made instance was removed"
    ]
    assert not world.store.exists("half") and not world.root.instance("half").path.exists()
    assert world.store.exists("src") and world.root.instance("src").disk.exists()


@needs_qemu_img
def test_recovery_removes_a_clone_directory_that_never_got_a_record(world: World) -> None:
    world.store.begin("half", "clone", "from src")
    world.root.instance("half").path.mkdir(parents=True)  # the crash came before the record
    recover(world)
    assert not world.root.instance("half").path.exists() and not world.store.exists("half")


@needs_qemu_img
def test_recovery_finishes_a_disk_resize(world: World) -> None:
    disk = world.add("vm")
    world.store.begin("vm", "set", f"disk {96 * MiB}")
    assert recover(world) == ["set on vm: setting finished: disk is 96.0MiB"]
    assert vsize(disk) == 96 * MiB and world.store.get("vm").spec.disk == 96 * MiB


@needs_qemu_img
def test_doctor_leaves_alone_a_directory_a_clone_is_making(world: World) -> None:
    """A clone's directory and disk exist before its record: while the clone (or a
    launch) holds that name, doctor must not offer to adopt it."""
    from ketch.service import doctor

    idir = world.root.instance("copying")
    idir.path.mkdir(parents=True)
    idir.disk.write_bytes(b"")  # the disk being copied
    world.ctx.active["copying"] = "clone"
    assert doctor.examine_root(world.ctx) == []
    del world.ctx.active["copying"]
    found = doctor.examine_root(world.ctx)
    assert [(f.instance, f.code) for f in found] == [("copying", "directory-without-record")]
