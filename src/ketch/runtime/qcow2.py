"""The disk half of a driver whose disks are qcow2 files, through ``qemu-img``.

:class:`Qcow2Disks` implements the disk methods of the
:class:`~ketch.runtime.driver.Driver` protocol (all but ``delete_tag``, which
depends on whether the VM runs) for a disk no QEMU holds, and ``disk_info``
and ``disk_tags`` also for one a QEMU holds (qemu-img's force-share).  The
QEMU driver is one; so is the test suite's fake hypervisor, whose disks are
real.
"""

from __future__ import annotations

from pathlib import Path

from ketch.errors import NotFound
from ketch.host import qemu_img
from ketch.layout import InstanceDir
from ketch.model import DiskCheck, DiskInfo, InstanceSpec


class Qcow2Disks:
    """Instance disks as qcow2 overlays on read-only base images."""

    async def create_disk(
        self, idir: InstanceDir, *, base: Path, base_format: str, size: int
    ) -> None:
        base_size = (await qemu_img.info(base)).virtual_size
        await qemu_img.create_overlay(idir.disk, base, base_format, max(size, base_size))

    async def disk_info(self, idir: InstanceDir) -> DiskInfo:
        return await qemu_img.info(idir.disk, fmt="qcow2")

    async def grow_disk(self, idir: InstanceDir, size: int) -> None:
        await qemu_img.resize(idir.disk, size)

    async def copy_disk(self, src: InstanceDir, dst: InstanceDir) -> None:
        info = await qemu_img.info(src.disk, fmt="qcow2")
        await qemu_img.convert(
            src.disk,
            dst.disk,
            backing=Path(info.backing) if info.backing else None,
            backing_format=info.backing_format,
        )

    async def check_disk(self, idir: InstanceDir, *, repair_leaks: bool = False) -> DiskCheck:
        return await qemu_img.check(idir.disk, repair_leaks=repair_leaks)

    async def rebase_disk(self, idir: InstanceDir, *, base: Path, base_format: str) -> None:
        await qemu_img.rebase_unsafe(idir.disk, base, base_format)

    async def disk_tags(self, spec: InstanceSpec, idir: InstanceDir) -> tuple[str, ...]:
        """From the qcow2 header (no process), else ``qemu-img snapshot -l``."""
        try:
            return qemu_img.read_snapshot_names(idir.disk)
        except (OSError, qemu_img.NotQcow2):
            return await qemu_img.snapshot_list(idir.disk)

    async def create_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        await qemu_img.snapshot_create(idir.disk, tag)

    async def apply_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        await qemu_img.snapshot_apply(idir.disk, tag)

    async def remove_tag(self, idir: InstanceDir, tag: str) -> None:
        """Delete an internal snapshot from a disk no QEMU holds."""
        await qemu_img.snapshot_delete(idir.disk, tag)


def require_base(spec: InstanceSpec) -> None:
    """The image files the disk is backed by and QEMU boots from must be there.

    Without them QEMU exits at once naming a file ("Could not open backing
    file"); this says which image file is missing, that nothing is lost, and
    what to do, before anything is touched (a suspended instance stays so).
    """
    files = [spec.base_disk, spec.boot.kernel, spec.boot.initrd]
    missing = [f for f in files if f and not Path(f).exists()]
    if missing:
        raise NotFound(
            f'cannot start "{spec.name}": its base image file {missing[0]} is missing '
            f"(image {spec.image_id}); the instance's own disk holds only what differs "
            "from it, and nothing of the instance was changed",
            hint="put the image back where it was, or run 'ketch doctor --fix' to fetch "
            "the same image again",
        )
