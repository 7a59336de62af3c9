"""``ketch mount``'s id maps by type: classic fills in the default map, native refuses what
virtiofsd cannot honour and records none (the use case on a real store, a fake hypervisor)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeDriver, FakeImages

from ketch.errors import InvalidArgument
from ketch.layout import Root
from ketch.model import BootSpec, IdMap, InstanceSpec, Intent, MountSpec, MountType
from ketch.progress import ListReporter
from ketch.service import mounts
from ketch.service.context import Context
from ketch.store.db import Store


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    root = Root(tmp_path / "root")
    root.path.mkdir()
    store = Store(root.database)
    spec = InstanceSpec(
        name="vm", image="tiny", image_id="ketch:tiny@1", release="ketch tiny", cpus=1,
        memory=512 * 1024**2, disk=64 * 1024**2, boot=BootSpec(), base_disk="/nonexistent",
        ssh_port=42001, mac="52:54:00:00:00:01", instance_id="i-vm",
    )  # fmt: skip
    root.instance("vm").path.mkdir(parents=True)
    store.add(spec, Intent.STOP)
    driver = FakeDriver()
    driver.add("vm", running=False, tags=set())
    try:
        yield Context(root, store, driver, FakeImages())
    finally:
        store.close()


def add(ctx: Context, mount: MountSpec) -> InstanceSpec:
    asyncio.run(mounts.add(ctx, "vm", [mount], ListReporter()))
    return ctx.store.get("vm").spec


def test_a_native_mount_records_no_id_maps(ctx: Context, tmp_path: Path) -> None:
    spec = add(ctx, MountSpec(str(tmp_path), "/data", MountType.NATIVE))
    (m,) = spec.mounts
    assert (m.type, m.uid_maps, m.gid_maps) == (MountType.NATIVE, (), ())


def test_a_native_mount_refuses_a_map_virtiofsd_cannot_honour(ctx: Context, tmp_path: Path) -> None:
    mount = MountSpec(str(tmp_path), "/data", MountType.NATIVE, uid_maps=(IdMap(1000, None),))
    with pytest.raises(InvalidArgument, match="cannot map uid 1000 to default"):
        add(ctx, mount)
    assert ctx.store.get("vm").spec.mounts == ()  # nothing recorded


def test_a_classic_mount_gets_the_default_map_of_its_sources_owner(
    ctx: Context, tmp_path: Path
) -> None:
    spec = add(ctx, MountSpec(str(tmp_path), "/data"))
    (m,) = spec.mounts
    owner = tmp_path.stat()
    assert m.uid_maps == (IdMap(owner.st_uid, None),)
    assert m.gid_maps == (IdMap(owner.st_gid, None),)
