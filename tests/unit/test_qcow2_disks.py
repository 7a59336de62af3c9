"""The disk half of the driver protocol (``runtime/qcow2.py``) on real qcow2 files.

Each method the QEMU driver (and the test suite's fake hypervisor) inherits is
run through the ``Driver`` protocol on files ``qemu-img`` makes, and checked
with ``qemu-img``/``qemu-io`` themselves.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ketch.errors import HostCommandError
from ketch.layout import InstanceDir
from ketch.model import BootSpec, InstanceSpec
from ketch.runtime.driver import Driver
from ketch.runtime.qemu_driver import QemuDriver

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="qemu-img/qemu-io not installed",
)

MiB = 1024**2
QEMU = QemuDriver()
DRIVER: Driver = QEMU  # every call below goes through the protocol but remove_tag
SPEC = InstanceSpec(  # the tag methods' spec: the QEMU driver's disks need only the directory
    name="vm", image="tiny", image_id="ketch:tiny@1", release="ketch tiny", cpus=1,
    memory=512 * MiB, disk=64 * MiB, boot=BootSpec(), base_disk="/nonexistent/base.qcow2",
    ssh_port=42001, mac="52:54:00:00:00:01", instance_id="i-vm",
)  # fmt: skip


def qi(*args: str) -> str:
    done = subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True)
    return done.stdout


def qio(disk: Path, command: str) -> str:
    argv = ["qemu-io", "-f", "qcow2", "-c", command, str(disk)]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def info(disk: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads(qi("info", "--output=json", "-U", str(disk)))
    return doc


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base.qcow2"
    qi("create", "-q", "-f", "qcow2", str(path), "64M")
    qio(path, "write -P 0xaa 0 64k")
    return path


def instance(tmp_path: Path, name: str) -> InstanceDir:
    idir = InstanceDir(tmp_path / name)
    idir.path.mkdir()
    return idir


def test_a_new_disk_is_an_overlay_never_smaller_than_its_base(tmp_path: Path, base: Path) -> None:
    small, large = instance(tmp_path, "small"), instance(tmp_path, "large")
    asyncio.run(DRIVER.create_disk(small, base=base, base_format="qcow2", size=16 * MiB))
    asyncio.run(DRIVER.create_disk(large, base=base, base_format="qcow2", size=128 * MiB))
    assert info(small.disk)["virtual-size"] == 64 * MiB  # the base's size
    assert info(large.disk)["virtual-size"] == 128 * MiB
    got = asyncio.run(DRIVER.disk_info(large))
    assert (got.format, got.virtual_size, got.backing) == ("qcow2", 128 * MiB, str(base))
    assert "pattern verification failed" not in qio(large.disk, "read -P 0xaa 0 64k")


def test_grow_and_check(tmp_path: Path, base: Path) -> None:
    idir = instance(tmp_path, "vm")
    asyncio.run(DRIVER.create_disk(idir, base=base, base_format="qcow2", size=64 * MiB))
    asyncio.run(DRIVER.grow_disk(idir, 96 * MiB))
    assert asyncio.run(DRIVER.disk_info(idir)).virtual_size == 96 * MiB
    check = asyncio.run(DRIVER.check_disk(idir))
    assert check.clean and (check.leaks, check.corruptions, check.check_errors) == (0, 0, 0)


def test_tags_are_taken_listed_applied_and_removed(tmp_path: Path, base: Path) -> None:
    idir = instance(tmp_path, "vm")
    asyncio.run(DRIVER.create_disk(idir, base=base, base_format="qcow2", size=64 * MiB))
    qio(idir.disk, "write -P 0x11 1M 64k")
    asyncio.run(DRIVER.create_tag(SPEC, idir, "ketch-snap-one"))
    qio(idir.disk, "write -P 0x22 1M 64k")
    assert asyncio.run(DRIVER.disk_tags(SPEC, idir)) == ("ketch-snap-one",)
    asyncio.run(DRIVER.apply_tag(SPEC, idir, "ketch-snap-one"))
    assert "pattern verification failed" not in qio(idir.disk, "read -P 0x11 1M 64k")
    asyncio.run(QEMU.remove_tag(idir, "ketch-snap-one"))  # delete_tag's way while stopped
    assert asyncio.run(DRIVER.disk_tags(SPEC, idir)) == ()
    with pytest.raises(HostCommandError):
        asyncio.run(DRIVER.apply_tag(SPEC, idir, "ketch-snap-one"))


def test_a_copy_shares_only_the_base_and_no_tags(tmp_path: Path, base: Path) -> None:
    src, dst = instance(tmp_path, "src"), instance(tmp_path, "dst")
    asyncio.run(DRIVER.create_disk(src, base=base, base_format="qcow2", size=64 * MiB))
    qio(src.disk, "write -P 0x33 2M 64k")
    asyncio.run(DRIVER.create_tag(SPEC, src, "ketch-snap-x"))
    asyncio.run(DRIVER.copy_disk(src, dst))
    copied = asyncio.run(DRIVER.disk_info(dst))
    assert copied.backing == str(base) and copied.backing_format == "qcow2"
    assert copied.snapshots == ()
    assert "identical" in qi("compare", str(src.disk), str(dst.disk))


def test_a_disk_without_a_base_is_copied_in_full(tmp_path: Path) -> None:
    src, dst = instance(tmp_path, "src"), instance(tmp_path, "dst")
    qi("create", "-q", "-f", "qcow2", str(src.disk), "32M")
    qio(src.disk, "write -P 0x44 0 64k")
    asyncio.run(DRIVER.copy_disk(src, dst))
    assert asyncio.run(DRIVER.disk_info(dst)).backing is None
    assert "identical" in qi("compare", str(src.disk), str(dst.disk))


def test_rebase_points_the_disk_at_another_copy_of_its_base(tmp_path: Path, base: Path) -> None:
    idir = instance(tmp_path, "vm")
    asyncio.run(DRIVER.create_disk(idir, base=base, base_format="qcow2", size=64 * MiB))
    moved = tmp_path / "elsewhere.qcow2"
    shutil.copyfile(base, moved)
    asyncio.run(DRIVER.rebase_disk(idir, base=moved, base_format="qcow2"))
    assert asyncio.run(DRIVER.disk_info(idir)).backing == str(moved)
    assert "pattern verification failed" not in qio(idir.disk, "read -P 0xaa 0 64k")
