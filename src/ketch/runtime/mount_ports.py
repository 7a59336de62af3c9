"""The QEMU driver's virtio-serial ports for classic mounts (a mixin of its class).

A new instance is recorded with the mounts' controller (``layout.MOUNT_SERIAL``,
written when its disk is made or copied) and QEMU gets it (``host/qemu.py``);
an instance without the record keeps the older layout, and its classic mounts
go over ssh.  :meth:`MountSerial.add_mount_port` hot-plugs one mount's port
(QMP ``chardev-add`` of a unix socket server, then ``device_add
virtserialport``) and returns the socket; :meth:`MountSerial.remove_mount_port`
unplugs it again (before a suspend: a saved state must not carry it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ketch.errors import KetchError
from ketch.host import mountport, procs, qmp
from ketch.layout import FILE_MODE, InstanceDir, mount_key
from ketch.model import InstanceSpec, PidStatus
from ketch.runtime.qcow2 import Qcow2Disks

UNPLUG_TRIES = 20  # chardev-remove after device_del: the port lets go of its chardev at once,
UNPLUG_PAUSE = 0.1  # usually; tried again, briefly, while QEMU says it is busy


def mark(idir: InstanceDir) -> None:
    """Record that the instance's QEMU has the mounts' controller (from its first start)."""
    tmp = idir.path / f".{idir.mount_serial.name}.new"
    tmp.write_text("virtio-serial-pci\n")
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, idir.mount_serial)


class MountSerial(Qcow2Disks):
    """The disk methods that record the controller, and the ports' hot-plug."""

    if TYPE_CHECKING:

        def _lock(self, idir: InstanceDir) -> asyncio.Lock: ...

        def _pid(
            self, idir: InstanceDir
        ) -> tuple[int | None, PidStatus, list[str] | None, int | None]: ...

    async def create_disk(
        self, idir: InstanceDir, *, base: Path, base_format: str, size: int
    ) -> None:
        await super().create_disk(idir, base=base, base_format=base_format, size=size)
        mark(idir)

    async def copy_disk(self, src: InstanceDir, dst: InstanceDir) -> None:
        await super().copy_disk(src, dst)
        mark(dst)  # a clone boots afresh: any layout fits it

    async def add_mount_port(
        self, spec: InstanceSpec, idir: InstanceDir, target: str
    ) -> Path | None:
        """Hot-plug the port of the mount at ``target``; its host socket (owner-only), or
        None when the running QEMU has no virtio-serial bus for it.  KetchError when the
        instance does not run or QEMU refuses."""
        _, status, argv, _ = self._pid(idir)
        if status is not PidStatus.OURS or argv is None:
            raise KetchError(f'instance "{spec.name}" is not running')
        bus = mountport.bus(argv)
        if bus is None:
            return None
        key, socket = mount_key(target), idir.mount_socket(target)
        socket.parent.mkdir(mode=0o700, exist_ok=True)
        async with self._lock(idir), qmp.connect(idir.qmp_socket) as mon:
            await _unplug(mon, key)  # an earlier one (a ketchd that died half-way)
            procs.remove_quietly(socket)
            await mon.execute("chardev-add", mountport.chardev_add_args(key, socket))
            try:
                os.chmod(socket, FILE_MODE)
                await mon.execute("device_add", mountport.device_add_args(key, bus))
            except (KetchError, OSError):
                with contextlib.suppress(KetchError):
                    await mon.execute("chardev-remove", {"id": mountport.chardev_id(key)})
                procs.remove_quietly(socket)
                raise
        return socket

    async def remove_mount_port(self, spec: InstanceSpec, idir: InstanceDir, target: str) -> None:
        """Unplug the mount's port and remove its chardev and socket, if there; never raises."""
        socket = idir.mount_socket(target)
        _, status, argv, _ = self._pid(idir)
        if status is PidStatus.OURS and argv is not None and mountport.bus(argv) is not None:
            with contextlib.suppress(KetchError, OSError):
                async with self._lock(idir), qmp.connect(idir.qmp_socket) as mon:
                    await _unplug(mon, mount_key(target))
        procs.remove_quietly(socket)


async def _unplug(mon: qmp.Monitor, key: str) -> None:
    """``device_del`` and ``chardev-remove`` of the mount's port (what is not there is fine)."""
    with contextlib.suppress(KetchError):
        await mon.execute("device_del", {"id": mountport.device_id(key)})
    for _ in range(UNPLUG_TRIES):
        try:
            await mon.execute("chardev-remove", {"id": mountport.chardev_id(key)})
            return
        except KetchError as exc:
            if "busy" not in exc.message.lower():
                return  # not found: nothing to remove
        await asyncio.sleep(UNPLUG_PAUSE)
