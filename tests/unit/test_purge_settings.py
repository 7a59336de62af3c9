"""Purging an instance removes its own settings (``local.NAME.autostart``, ``.auto-forward``).

A real store on a real file and the fake hypervisor with real qcow2 disks
(``tests/fakes.py``): a new instance given a purged one's name must not inherit
its opt-outs, while every other setting stays as it was.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
from fakes import FakeDriver, FakeImages

from ketch.layout import Root
from ketch.model import BootSpec, InstanceSpec, Intent
from ketch.progress import ListReporter
from ketch.service import delete
from ketch.service.context import Context
from ketch.store.db import Store

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
MiB = 1024**2


def add(ctx: Context, driver: FakeDriver, base: Path, name: str, port: int) -> None:
    idir = ctx.root.instance(name)
    idir.path.mkdir(parents=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
         str(idir.disk), "64M"],
        check=True,
    )  # fmt: skip
    ctx.store.add(
        InstanceSpec(
            name=name, image="tiny", image_id="ketch:tiny@1", release="ketch tiny", cpus=1,
            memory=256 * MiB, disk=64 * MiB, boot=BootSpec(), base_disk=str(base),
            ssh_port=port, mac="52:54:00:00:00:01", instance_id=f"i-{name}",
        ),
        Intent.STOP,
    )  # fmt: skip
    driver.add(name, running=False, tags=set())


def test_purge_removes_the_instances_own_settings_and_no_other(tmp_path: Path) -> None:
    root = Root(tmp_path / "root")
    root.path.mkdir()
    store = Store(root.database)
    try:
        driver = FakeDriver()
        ctx = Context(root, store, driver, FakeImages())
        base = tmp_path / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
        add(ctx, driver, base, "network", 42001)  # a name that is also a settings word
        add(ctx, driver, base, "web", 42002)
        kept = {
            "local.network.subnet": "10.77.0.0/24",
            "local.web.autostart": "false",
            "local.auto-forward": "false",
        }
        for key, value in kept.items():
            store.set_setting(key, value)
        store.set_setting("local.network.autostart", "false")
        store.set_setting("local.network.auto-forward", "false")

        asyncio.run(delete.delete(ctx, "network", ListReporter(), purge=True))

        assert dict(store.settings("local.")) == kept
        assert not root.instance("network").path.exists()
    finally:
        store.close()
