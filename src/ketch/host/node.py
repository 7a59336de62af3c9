"""What the daemon's own machine has, for the built-in host ``local`` (``ketch host list``).

The same facts a libvirt host's probe gives (:class:`~ketch.host.libvirt.NodeFacts`), read
from the kernel: CPUs, ``MemTotal`` and ``MemAvailable`` of ``/proc/meminfo`` (what a new
QEMU can have without swapping), the storage root's free space (``statvfs``) and the
machine's architecture (``uname -m``).
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

from ketch.host.libvirt import NodeFacts

MEMINFO = Path("/proc/meminfo")


def parse_meminfo(text: str) -> tuple[int, int]:
    """``(MemTotal, MemAvailable)`` in bytes from /proc/meminfo's text (pure)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            scale = 1024 if fields[1:2] == ["kB"] else 1
            values[key.strip()] = int(fields[0]) * scale
    total = values.get("MemTotal", 0)
    return total, values.get("MemAvailable", values.get("MemFree", 0))


def local_facts(storage: Path) -> NodeFacts:
    """The daemon machine's facts; the disk is the storage root's filesystem."""
    total, free = parse_meminfo(MEMINFO.read_text())
    st = os.statvfs(storage)
    return NodeFacts(
        cpus=os.cpu_count() or 1,
        memory_total=total,
        memory_free=free,
        disk_free=st.f_bavail * st.f_frsize,
        disk_pool=None,
        hostname=socket.gethostname(),
        arch=platform.machine(),
    )
