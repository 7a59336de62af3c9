"""The clock seam: what ketch stamps and schedules follows ``Context.clock``, moved by hand here.

A real store on a real file, the fake hypervisor with real qcow2 disks
(``tests/fakes.py``) and a :class:`FakeClock`: a delayed shutdown falls due
exactly when the clock passes it (no waiting), a snapshot carries the clock's
time, and ``image prune --days`` measures age on the same clock.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeClock, FakeDriver, FakeImages

from ketch.clock import SYSTEM
from ketch.layout import Root
from ketch.model import BootSpec, InstanceSpec, Intent
from ketch.progress import ListReporter
from ketch.service import lifecycle, snapshots
from ketch.service.context import Context
from ketch.service.images import Images
from ketch.store.db import Store

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
MiB = 1024**2


def spec(name: str, base: Path) -> InstanceSpec:
    return InstanceSpec(
        name=name, image="tiny", image_id="ketch:tiny@1", release="ketch tiny", cpus=1,
        memory=512 * MiB, disk=64 * MiB, boot=BootSpec(), base_disk=str(base),
        ssh_port=42001, mac="52:54:00:00:00:01", instance_id=f"i-{name}",
    )  # fmt: skip


class World:
    def __init__(self, tmp: Path) -> None:
        self.root = Root(tmp / "root")
        self.root.path.mkdir()
        self.store = Store(self.root.database)
        self.clock = FakeClock()
        self.driver = FakeDriver()
        self.ctx = Context(self.root, self.store, self.driver, FakeImages(), clock=self.clock)
        self.base = tmp / "base.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(self.base), "64M"], check=True
        )

    def add(self, name: str, *, running: bool) -> None:
        idir = self.root.instance(name)
        idir.path.mkdir(parents=True)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.base),
             str(idir.disk), "64M"],
            check=True,
        )  # fmt: skip
        self.store.add(spec(name, self.base), Intent.RUN if running else Intent.STOP)
        self.driver.add(name, running=running, tags=set())


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.store.close()


def test_the_default_clock_is_the_system_clock(tmp_path: Path) -> None:
    store = Store(tmp_path / "k.db")
    try:
        ctx = Context(Root(tmp_path), store, FakeDriver(), FakeImages())
        assert ctx.clock is SYSTEM
    finally:
        store.close()


@needs_qemu_img
def test_a_delayed_shutdown_falls_due_when_the_clock_passes_it(world: World) -> None:
    world.add("late", running=True)
    world.add("other", running=True)
    got = asyncio.run(lifecycle.delayed_stop(world.ctx, "late", 5))
    assert got.shutdown_at == world.clock.now + 300
    assert world.store.get("late").shutdown_at == world.clock.now + 300
    world.clock.advance(299)
    assert lifecycle.due_shutdowns(world.ctx) == []
    world.clock.advance(1)
    assert lifecycle.due_shutdowns(world.ctx) == ["late"]  # due at exactly its time, only it
    world.store.set_deleted("late", True)
    assert lifecycle.due_shutdowns(world.ctx) == []  # a deleted instance is never stopped


@needs_qemu_img
def test_a_snapshot_is_stamped_with_the_contexts_clock(world: World) -> None:
    world.add("vm", running=False)
    asyncio.run(snapshots.take(world.ctx, "vm", None, "", ListReporter()))
    (meta,) = world.store.snapshots("vm")
    assert meta.created == world.clock.now


def test_image_prune_measures_age_on_the_given_clock(tmp_path: Path) -> None:
    root = Root(tmp_path / "root")
    root.path.mkdir()
    store = Store(root.database)
    try:
        old, new = root.vault / "built" / "tiny" / "k1", root.vault / "built" / "tiny" / "k2"
        for d, age in ((old, 10 * 86400), (new, 0)):
            d.mkdir(parents=True)
            (d / "manifest.json").write_text("{}")
            when = 1_800_000_000.0 - age
            os.utime(d / "manifest.json", (when, when))
        clock = FakeClock(start=1_800_000_000.0)
        images = Images(root, store, clock)
        assert images.prune(11, set()) == []  # ten days old by this clock: kept
        clock.advance(2 * 86400)  # now twelve days old; the newest build is always kept
        assert [r.path for r in images.prune(11, set())] == [str(old)]
        assert not old.exists() and new.exists()
    finally:
        store.close()
