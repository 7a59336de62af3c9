"""Snapshots and clone of an instance on another host go to that host's driver, not the local one.

The world of test_snapshots_service.py (a real store, real qcow2 files, no QEMU process),
with a second host ``lv`` whose driver is a QEMU driver that records the disk calls made of
it and purges like a libvirt host (:class:`~ketch.runtime.driver.Purges`); the local
driver refuses every tag call, so a call that went there fails the test.  The libvirt
driver itself is tested on a real libvirtd (tests/integration/test_libvirt_snapshots.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_snapshots_service import World, holds, needs_qemu_img, write

from ketch.errors import KetchError
from ketch.layout import InstanceDir
from ketch.model import HostSpec, InstanceSpec
from ketch.progress import ListReporter
from ketch.runtime.driver import Driver
from ketch.runtime.qemu_driver import QemuDriver
from ketch.service import clone, snapshots
from ketch.service.drivers import Drivers


class Host(QemuDriver):
    """The host's driver: the QEMU driver's disks, its calls recorded, a purge of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.purged: list[str] = []
        self.fail_copy = False

    async def create_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        self.calls.append(f"create_tag {spec.name}")
        await super().create_tag(spec, idir, tag)

    async def apply_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        self.calls.append(f"apply_tag {spec.name}")
        await super().apply_tag(spec, idir, tag)

    async def disk_tags(self, spec: InstanceSpec, idir: InstanceDir) -> tuple[str, ...]:
        self.calls.append(f"disk_tags {spec.name}")
        return await super().disk_tags(spec, idir)

    async def delete_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        self.calls.append(f"delete_tag {spec.name}")
        await super().delete_tag(spec, idir, tag)

    async def copy_disk(self, src: InstanceDir, dst: InstanceDir) -> None:
        self.calls.append(f"copy_disk {src.path.name} {dst.path.name}")
        if self.fail_copy:
            raise KetchError("the host's copy failed")
        await super().copy_disk(src, dst)

    async def purge(self, spec: InstanceSpec, idir: InstanceDir) -> None:
        self.purged.append(spec.name)


class LocalOnly(QemuDriver):
    """The local driver: an instance on ``lv`` must never reach its tag methods."""

    async def disk_tags(self, spec: InstanceSpec, idir: InstanceDir) -> tuple[str, ...]:
        raise AssertionError(f"the local driver was asked for {spec.name}'s tags")

    async def create_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        raise AssertionError("the local driver was asked to take a snapshot")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[World, Host]]:
    w = World(tmp_path)
    host = Host()
    w.ctx.driver = LocalOnly()

    def opener(spec: HostSpec, uri: str) -> Driver:
        return host

    w.ctx.drivers = Drivers(w.root, w.store, w.ctx.driver, opener)
    w.store.add_host(HostSpec(name="lv", uri="qemu:///system", created=0.0))
    yield w, host
    w.store.close()


@needs_qemu_img
def test_snapshots_of_an_instance_on_a_host_are_its_drivers(world: tuple[World, Host]) -> None:
    w, host = world
    disk = w.add("vm", host="lv")
    write(disk, 0x11)
    rep = ListReporter()
    w.run(snapshots.take(w.ctx, "vm", "one", "", rep))
    write(disk, 0x22)
    w.run(snapshots.restore(w.ctx, "vm", "one", snapshot_first=False, reporter=rep))
    assert holds(disk, 0x11) and not holds(disk, 0x22)
    w.run(snapshots.delete(w.ctx, "vm", "one", rep))
    assert host.calls == [
        "create_tag vm", "disk_tags vm", "apply_tag vm", "disk_tags vm", "delete_tag vm",
    ]  # fmt: skip
    assert w.store.snapshots("vm") == [] and w.store.unfinished() == []


@needs_qemu_img
def test_a_clone_is_made_by_the_sources_host_and_purged_there_when_it_fails(
    world: tuple[World, Host],
) -> None:
    w, host = world
    w.add("src", host="lv")
    w.run(clone.clone(w.ctx, "src", "copy", ListReporter()))
    assert w.store.get("copy").spec.host == "lv" and w.root.instance("copy").seed_iso.exists()
    host.fail_copy = True
    with pytest.raises(KetchError, match="the host's copy failed"):
        w.run(clone.clone(w.ctx, "src", "copy2", ListReporter()))
    assert host.calls == ["copy_disk src copy", "copy_disk src copy2"]
    assert host.purged == ["copy2"]  # what the failed clone made on the host
    assert not w.store.exists("copy2") and not w.root.instance("copy2").path.exists()
