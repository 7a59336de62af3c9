"""A classic mount's virtio-serial port (pure): its names, QMP arguments and bus.

Per mount, ketch hot-plugs a ``virtserialport`` named
``org.ketch.mount.<key>`` (``layout.mount_key``) whose chardev is a unix
socket server in the instance's mounts directory: the host supervisor
(``host/sftp``) connects to it, the guest's sshfs reads and writes the port's
``/dev/vportNpM``.  The port goes on the controller ``host/qemu.py`` gives a
new instance (:data:`~ketch.host.qemu.MOUNT_SERIAL`) or, on a warm clone, on
the bus its template already has (the warm agent's).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ketch.host.qemu import AGENT_SERIAL, MOUNT_SERIAL

PORT_PREFIX = "org.ketch.mount."


def port_name(key: str) -> str:
    """The port's name in the guest (``/sys/class/virtio-ports/*/name``)."""
    return PORT_PREFIX + key


def chardev_id(key: str) -> str:
    return f"kmount-{key}"


def device_id(key: str) -> str:
    return f"kmountport-{key}"


def chardev_add_args(key: str, socket: Path) -> dict[str, Any]:
    """``chardev-add``: a unix socket server that does not wait for its client."""
    return {
        "id": chardev_id(key),
        "backend": {
            "type": "socket",
            "data": {
                "addr": {"type": "unix", "data": {"path": str(socket)}},
                "server": True,
                "wait": False,
            },
        },
    }


def device_add_args(key: str, bus: str) -> dict[str, Any]:
    """``device_add``: the port on ``bus`` (a virtio-serial controller's ``ID.0``)."""
    return {
        "driver": "virtserialport",
        "id": device_id(key),
        "bus": bus,
        "chardev": chardev_id(key),
        "name": port_name(key),
    }


def bus(qemu_argv: Sequence[str]) -> str | None:
    """The virtio-serial bus a running QEMU (its argv) has for mount ports, or None:
    the mounts' controller, else a warm clone's agent controller."""
    for controller in (MOUNT_SERIAL, AGENT_SERIAL):
        if f"virtio-serial-pci,id={controller}" in qemu_argv:
            return f"{controller}.0"
    return None
