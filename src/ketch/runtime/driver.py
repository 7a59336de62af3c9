"""The driver interface every hypervisor backend implements (QEMU now).

A driver knows how to start, observe, stop and suspend one instance given its
spec and its directory.  It keeps no state of its own between calls: whatever
it needs is in the instance directory (pid file, QMP socket, disk), so a
restarted daemon takes running VMs back.  (Modelled on Lima's pkg/driver.)
"""

from __future__ import annotations

from typing import Protocol

from ketch.layout import InstanceDir
from ketch.model import InstanceSpec, Observation
from ketch.progress import Reporter

SUSPEND_TAG = "suspend"


class Driver(Protocol):
    """One hypervisor backend."""

    name: str

    async def observe(
        self, spec: InstanceSpec, idir: InstanceDir, *, probe_qmp: bool = True
    ) -> Observation:
        """Look at the instance now: process, monitor, snapshot tags.  Never raises."""
        ...

    async def start(
        self, spec: InstanceSpec, idir: InstanceDir, *, accel: str, resume: bool
    ) -> None:
        """Start the VM detached; with ``resume``, from the suspend tag."""
        ...

    async def powerdown(self, spec: InstanceSpec, idir: InstanceDir, *, timeout: float) -> bool:
        """Ask the guest to power off (ACPI); True when QEMU exited in time."""
        ...

    async def kill(self, spec: InstanceSpec, idir: InstanceDir) -> bool:
        """End this instance's QEMU if it runs (never another process); clean up.

        Returns True when a process was ended.
        """
        ...

    async def suspend(
        self, spec: InstanceSpec, idir: InstanceDir, *, reporter: Reporter, timeout: float
    ) -> None:
        """Pause, save the VM state as the suspend tag, end QEMU."""
        ...

    async def cont(self, spec: InstanceSpec, idir: InstanceDir) -> None:
        """Resume paused vCPUs."""
        ...

    async def settle(self, spec: InstanceSpec, idir: InstanceDir, *, timeout: float) -> None:
        """Wait for block jobs a previous daemon started (snapshot-save ...) to end."""
        ...

    async def delete_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        """Remove an internal snapshot tag (through QMP while running, else qemu-img)."""
        ...
