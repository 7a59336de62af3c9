"""The driver interface every hypervisor backend implements (QEMU now).

A driver knows how to start, observe, stop and suspend one instance given its
spec and its directory.  It keeps no state of its own between calls: whatever
it needs is in the instance directory (pid file, QMP socket, disk), so a
restarted daemon takes running VMs back.  (Modelled on Lima's pkg/driver.)

The driver also owns the instance's disk: making it, growing it, copying it
for a clone, checking and repairing it, and its internal snapshot tags (the
``suspend`` tag and snapshots).  Services never run a disk tool themselves,
so another backend (libvirt) implements this one protocol and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ketch.host.hostfwd import HostFwd
from ketch.layout import InstanceDir, TemplateDir
from ketch.model import DiskCheck, DiskInfo, InstanceSpec, Observation
from ketch.progress import Reporter

if TYPE_CHECKING:
    from collections.abc import Callable

    from ketch.runtime.template import TemplateBoot

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
        """Start the VM detached; with ``resume``, from the suspend tag.

        Each native mount of the spec whose source is there gets its device
        (and host daemon) when not resuming; one whose source is not is skipped.
        """
        ...

    async def powerdown(self, spec: InstanceSpec, idir: InstanceDir, *, timeout: float) -> bool:
        """Ask the guest to power off (ACPI); True when QEMU exited in time."""
        ...

    async def kill(self, spec: InstanceSpec, idir: InstanceDir) -> bool:
        """End this instance's QEMU if it runs (never another process); clean up
        (its native mounts' host daemons too).

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

    # -- the disk (the instance is stopped unless said otherwise) ----------------------------

    async def create_disk(
        self, idir: InstanceDir, *, base: Path, base_format: str, size: int
    ) -> None:
        """Make the instance's disk: an overlay on the read-only image ``base``.

        Its size is ``size`` bytes, or the base's own size when that is larger.
        """
        ...

    async def disk_info(self, idir: InstanceDir) -> DiskInfo:
        """Describe the instance's disk (also while its VM holds it)."""
        ...

    async def grow_disk(self, idir: InstanceDir, size: int) -> None:
        """Grow the disk to ``size`` bytes."""
        ...

    async def copy_disk(self, src: InstanceDir, dst: InstanceDir) -> None:
        """Make ``dst``'s disk an independent copy of ``src``'s current disk.

        The copy shares only ``src``'s read-only base image (a disk without
        one is copied in full); internal snapshot tags are not copied.
        """
        ...

    async def check_disk(self, idir: InstanceDir, *, repair_leaks: bool = False) -> DiskCheck:
        """Check the disk's consistency; with ``repair_leaks``, repair leaked clusters too."""
        ...

    async def rebase_disk(self, idir: InstanceDir, *, base: Path, base_format: str) -> None:
        """Point the disk at another copy of the same base image (no data is copied)."""
        ...

    async def disk_tags(self, spec: InstanceSpec, idir: InstanceDir) -> tuple[str, ...]:
        """The disk's internal snapshot tags (also while its VM holds it)."""
        ...

    async def create_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        """Take an internal snapshot of the disk under ``tag``."""
        ...

    async def apply_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        """Bring the disk (its size included) back to the internal snapshot ``tag``."""
        ...


@runtime_checkable
class Purges(Protocol):
    """A driver whose instances have state outside their directory (a libvirt host's domain
    and volumes): ``delete --purge`` and a failed launch remove it through :meth:`purge`."""

    async def purge(self, spec: InstanceSpec, idir: InstanceDir) -> None:
        """Remove what the instance has on its host (never its local directory)."""
        ...


@runtime_checkable
class Reaches(Protocol):
    """A driver whose guests' SSH ports need something held open to be reached from here
    (a remote libvirt host: the jump, ``host/ssh/jump.py``)."""

    async def reach(self, spec: InstanceSpec, idir: InstanceDir) -> None:
        """Make the running guest's SSH answer on 127.0.0.1:``spec.ssh_port`` (idempotent)."""
        ...


@runtime_checkable
class HostForwarding(Protocol):
    """A driver whose running VMs forward host ports into the guest (QEMU's user networking).

    Kept apart from :class:`Driver`: a backend without it (or a test's fake) has no
    automatic or explicit port forwards, and says so in ``info``.
    """

    async def forwards(self, spec: InstanceSpec, idir: InstanceDir) -> list[HostFwd]:
        """The forwards the running VM has now, read from the VM itself."""
        ...

    async def add_forward(self, spec: InstanceSpec, idir: InstanceDir, fwd: HostFwd) -> None:
        """Add a forward; HostCommandError with the hypervisor's words when it cannot."""
        ...

    async def remove_forward(self, spec: InstanceSpec, idir: InstanceDir, fwd: HostFwd) -> bool:
        """Remove a forward; False when the VM had no such forward."""
        ...


@runtime_checkable
class WarmStart(Protocol):
    """A driver that saves booted guests as templates and starts clones of them
    (warm launch: ``runtime/template.py``).  Kept apart from :class:`Driver`, as
    :class:`HostForwarding` is: a backend without it launches cold, always.
    """

    async def make_template(
        self,
        tdir: TemplateDir,
        tb: TemplateBoot,
        *,
        accel: str,
        seed_iso: Path,
        timeout: float,
        nice: bool = False,
    ) -> None:
        """Boot the template's golden disk until its guest agent is idle, then save it."""
        ...

    async def start_warm(
        self,
        spec: InstanceSpec,
        idir: InstanceDir,
        tdir: TemplateDir,
        *,
        accel: str,
        template_macs: tuple[str, ...],
        clock: Callable[[], float],
        grow: bool,
        handover_timeout: float = ...,
    ) -> list[str]:
        """Start ``spec`` as a clone of the template and hand it its identity (the time
        from ``clock`` at the hand-over; ``grow``: its disk is larger than the
        template's; ``handover_timeout``: the agent's bound); the guest agent's warnings.
        TemplateError when the template does not load."""
        ...


@runtime_checkable
class MountPorts(Protocol):
    """A driver that hot-plugs a virtio-serial port per classic mount (the SFTP stream
    without ssh's crypto; ``runtime/mount_ports.py``).  A backend without it, or an
    instance without a bus for it, mounts over ssh.
    """

    async def add_mount_port(
        self, spec: InstanceSpec, idir: InstanceDir, target: str
    ) -> Path | None:
        """Plug the port of the mount at ``target``: its host socket, or None when the
        instance has no bus for it; KetchError when the hot-plug fails."""
        ...

    async def remove_mount_port(self, spec: InstanceSpec, idir: InstanceDir, target: str) -> None:
        """Unplug it again, if it is there; never raises."""
        ...
