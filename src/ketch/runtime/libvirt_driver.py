"""The libvirt driver's core: an instance's volumes and domain on one libvirt host.

Services reach it through :mod:`.libvirt_host` (the :class:`~ketch.runtime.driver.Driver`
protocol on top of it, for ``launch --host``).  On one connection to the host's URI
(:meth:`LibvirtDriver.connect`):

- **the pool and the volumes** (:mod:`.libvirt_pool`): ketch's ``dir`` pool, made when
  missing; the base image uploaded with libvirt's storage-volume upload and verified by
  downloading it back (sha256 of both streams); the instance's disk, a qcow2 volume
  backed by the base volume (libvirt runs ``qemu-img create -b``); the NoCloud seed ISO,
  uploaded and verified alike;
- **the domain**: defined from :func:`~ketch.runtime.libvirt_xml.domain_xml` (type
  ``qemu``, i.e. TCG, unless told KVM works), with user-mode networking and the guest's
  SSH forwarded from 127.0.0.1:``ssh_port``; started, shut down through ACPI within a
  deadline, destroyed (``stop --force``), and undefined with its volumes (``purge``),
  after which a base volume no other volume is backed by is deleted too; suspended as a
  **managed save** (``virDomainManagedSave``: libvirt writes the state beside the disk and
  the next start restores it), its saved state discarded (``managedSaveRemove``), its
  paused vCPUs resumed;
- **snapshots**: libvirt's domain snapshots of the shut-off domain, internal qcow2
  snapshots of its disk volume (libvirt runs ``qemu-img snapshot`` on the host), named by
  ketch's tags: taken and reverted with the domain defined (again) with its disk volume
  alone (the raw seed ISO is not a disk libvirt snapshots), listed and deleted;
- **the state**: ``virDomainGetState`` and the managed save image, made the same
  :class:`~ketch.model.Observation` the QEMU driver gives (:mod:`.libvirt_state`), so
  :func:`~ketch.runtime.derive.derive` is the same for both.

Every libvirt call runs through :func:`ketch.host.libvirt.bounded` (a deadline each, the
errors translated there once); the binding is loaded only in those calls' threads.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ketch.errors import InvalidState, NotFound
from ketch.host.libvirt import binding
from ketch.model import InstanceSpec, Observation, PidStatus
from ketch.runtime import libvirt_state
from ketch.runtime.libvirt_pool import (
    POOL,
    LibvirtPool,
    Volume,
    deleted,
    disk_name,
    found,
    initrd_name,
    instance_volumes,
    kernel_name,
)
from ketch.runtime.libvirt_xml import (
    NAMESPACE,
    Volumes,
    domain_name,
    domain_xml,
    snapshot_xml,
    with_host_port,
)

UNDEFINE_FLAGS = 1 | 2 | 4 | 16  # managed save, snapshot metadata, NVRAM, checkpoints
SAVE_IMAGE_XML_SECURE = 1  # virDomainSaveImageXMLFlags: the whole definition

__all__ = ["POOL", "LibvirtDriver"]


class LibvirtDriver(LibvirtPool):
    """One libvirt host's instances: pool, volumes (:class:`LibvirtPool`), domains."""

    name = "libvirt"

    # -- the domain ----------------------------------------------------------------------

    def _domain(self, spec: InstanceSpec) -> Any | None:
        """The instance's domain, or None when none is defined.  Blocking."""
        no_domain = binding().VIR_ERR_NO_DOMAIN
        return found(lambda: self.conn.lookupByName(domain_name(spec.name)), no_domain)

    def _ours(self, dom: Any, spec: InstanceSpec) -> bool:
        libvirt = binding()
        try:
            meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, 0)
        except libvirt.libvirtError:
            return False
        return libvirt_state.instance_id(str(meta)) == spec.instance_id

    def _own(self, spec: InstanceSpec) -> Any | None:
        """The instance's domain if it is this instance's (NotFound when another's)."""
        dom = self._domain(spec)
        if dom is not None and not self._ours(dom, spec):
            raise NotFound(
                f"libvirt's domain {domain_name(spec.name)} is not instance {spec.name}'s "
                "(its metadata names another instance-id): ketch leaves it alone"
            )
        return dom

    async def define(
        self,
        spec: InstanceSpec,
        disk: Volume,
        seed: Volume | None,
        *,
        kernel: Volume | None = None,
        initrd: Volume | None = None,
    ) -> None:
        """Define the instance's domain (user networking, SSH on the host's 127.0.0.1 at
        its port); an instance's domain defined already is defined again from the spec now
        (its UUID kept): the next start has the spec's SSH port, CPUs and memory.
        ``kernel``, ``initrd``: the image's, as volumes (a direct kernel boot)."""
        volumes = Volumes(
            disk=disk.path,
            seed=None if seed is None else seed.path,
            kernel=None if kernel is None else kernel.path,
            initrd=None if initrd is None else initrd.path,
        )

        def define() -> None:
            dom = self._own(spec)
            uuid = None if dom is None else str(dom.UUIDString())
            xml = domain_xml(spec, volumes, kvm=self.kvm, user_net=True, uuid=uuid)
            self.conn.defineXML(xml)

        await self._call("define", define)

    async def start(self, spec: InstanceSpec) -> None:
        def start() -> None:
            dom = self._own(spec)
            if dom is None:
                raise NotFound(f"instance {spec.name} has no domain on {self.uri}")
            if not dom.isActive():
                dom.create()

        await self._call("start", start)

    async def powerdown(self, spec: InstanceSpec, *, timeout: float) -> bool:
        """Ask the guest to power off (ACPI); True when the domain is off within ``timeout``."""

        def ask() -> bool:
            dom = self._own(spec)
            if dom is None or not dom.isActive():
                return False
            dom.shutdownFlags(binding().VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            return True

        if not await self._call("shutdown", ask):
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            obs = await self.observe(spec)
            if obs.pid_status is not PidStatus.OURS:
                return True
            await asyncio.sleep(0.5)
        return False

    async def kill(self, spec: InstanceSpec) -> bool:
        """Destroy the domain if it runs (``stop --force``); True when it did."""

        def destroy() -> bool:
            dom = self._own(spec)
            if dom is None or not dom.isActive():
                return False
            dom.destroy()
            return True

        done: bool = await self._call("destroy", destroy)
        return done

    async def purge(self, spec: InstanceSpec) -> None:
        """Destroy and undefine the domain, delete its volumes, and a base none uses now."""

        def undefine() -> None:
            dom = self._own(spec)
            if dom is None:
                return
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(UNDEFINE_FLAGS)

        await self._call("undefine", undefine)
        for name in instance_volumes(spec.name):
            await self.delete_volume(name)
        await self.prune_bases()

    async def suspend(self, spec: InstanceSpec, *, timeout: float) -> None:
        """Save the running domain's state as its managed save image; the domain ends."""

        def save() -> None:
            dom = self._own(spec)
            if dom is None or not dom.isActive():
                raise NotFound(f"instance {spec.name} has no running domain on {self.uri}")
            dom.managedSave(0)

        await self._call("managedsave", save, timeout)

    async def discard_saved(self, spec: InstanceSpec) -> bool:
        """Remove the domain's managed save image; False when it had none."""

        def remove() -> bool:
            dom = self._own(spec)
            if dom is None or not dom.hasManagedSaveImage(0):
                return False
            dom.managedSaveRemove(0)
            return True

        done: bool = await self._call("managedsave-remove", remove)
        return done

    async def resume(self, spec: InstanceSpec) -> None:
        """Resume the paused vCPUs of a running domain."""

        def resume() -> None:
            dom = self._own(spec)
            if dom is None or not dom.isActive():
                raise NotFound(f"instance {spec.name} has no running domain on {self.uri}")
            dom.resume()

        await self._call("resume", resume)

    async def retarget_saved(self, spec: InstanceSpec) -> bool:
        """Make the managed save's definition forward the spec's SSH port (an SSH port
        changed while the instance was suspended); True when it had to."""

        def retarget() -> bool:
            dom = self._own(spec)
            if dom is None or not dom.hasManagedSaveImage(0):
                return False
            xml = str(dom.managedSaveGetXMLDesc(SAVE_IMAGE_XML_SECURE))
            new = with_host_port(xml, spec)
            if new == xml:
                return False
            dom.managedSaveDefineXML(new, 0)
            return True

        done: bool = await self._call("managedsave-define", retarget)
        return done

    async def defined(self, spec: InstanceSpec) -> bool:
        """Is the instance's own domain defined on the host?"""
        dom = await self._call("lookup", lambda: self._own(spec))
        return dom is not None

    async def observe(self, spec: InstanceSpec) -> Observation:
        """The instance as :func:`~ketch.runtime.derive.derive` reads it (see
        :mod:`.libvirt_state`).  Raises only when libvirt cannot be asked."""

        def look() -> Observation:
            libvirt = binding()
            disk = self._lookup_volume(disk_name(spec.name)) is not None
            dom = self._domain(spec)
            if dom is None:
                return libvirt_state.observation(
                    None, 0, ours=True, managed_save=False, disk_exists=disk
                )
            state, reason = dom.state(0)
            saved: bool | None
            error = None
            try:
                saved = bool(dom.hasManagedSaveImage(0))
            except libvirt.libvirtError as exc:
                saved, error = None, str(exc)
            return libvirt_state.observation(
                int(state), int(reason), ours=self._ours(dom, spec), managed_save=saved,
                disk_exists=disk, tag_error=error,
            )  # fmt: skip

        obs: Observation = await self._call("state", look)
        return obs

    # -- snapshots: internal ones of the shut-off domain's disk volume -------------------

    def _disk_only(self, spec: InstanceSpec) -> Any:
        """The instance's shut-off domain, defined (again, its UUID kept) with its disk
        volume alone: libvirt's inactive internal snapshot runs ``qemu-img snapshot`` on
        each of the domain's disks, and the seed is a raw ISO.  The next boot defines it
        from the spec again, seed included.  A direct kernel boot's kernel and initrd (not
        disks) stay named: the callers make sure of their volumes first (``boot_files``).
        Blocking."""
        dom = self._own(spec)
        if dom is not None and dom.isActive():
            said = f"instance {spec.name}'s domain runs on {self.uri}"
            raise InvalidState(spec.name, "running", ["stopped"], message=said)
        pool = self._pool()
        disk = pool.storageVolLookupByName(disk_name(spec.name))
        uuid = None if dom is None else str(dom.UUIDString())
        boot = {
            key: str(pool.storageVolLookupByName(name(spec.name)).path())
            for key, name, path in (
                ("kernel", kernel_name, spec.boot.kernel),
                ("initrd", initrd_name, spec.boot.initrd),
            )
            if path
        }
        volumes = Volumes(disk=str(disk.path()), **boot)
        xml = domain_xml(spec, volumes, kvm=self.kvm, user_net=True, uuid=uuid)
        return self.conn.defineXML(xml)

    async def snapshot_names(self, spec: InstanceSpec) -> tuple[str, ...]:
        """The names of the domain's snapshots (none when it has no domain)."""

        def names() -> tuple[str, ...]:
            dom = self._own(spec)
            if dom is None:
                return ()
            return tuple(str(snap.getName()) for snap in dom.listAllSnapshots(0))

        found: tuple[str, ...] = await self._call("snapshot-list", names)
        return found

    async def create_snapshot(self, spec: InstanceSpec, name: str) -> None:
        """Take the internal snapshot ``name`` of the shut-off domain's disk."""

        def create() -> None:
            self._disk_only(spec).snapshotCreateXML(snapshot_xml(name), 0)

        await self.boot_files(spec)  # named by the definition _disk_only makes
        await self._call("snapshot-create", create)

    async def revert_snapshot(self, spec: InstanceSpec, name: str) -> None:
        """Bring the shut-off domain's disk back to its snapshot ``name``."""

        def revert() -> None:
            dom = self._disk_only(spec)
            dom.revertToSnapshot(dom.snapshotLookupByName(name, 0), 0)

        await self.boot_files(spec)  # named by the definition _disk_only makes
        await self._call("snapshot-revert", revert)

    async def delete_snapshot(self, spec: InstanceSpec, name: str) -> bool:
        """Delete the snapshot ``name`` (metadata and disk tag); False when there is none.
        A shut-off domain is defined with its disk alone first, as for a take (a running
        one's QEMU deletes it; a suspended one's definition is left as the save has it)."""

        def delete() -> bool:
            dom = self._own(spec)
            if dom is None:
                return False
            if not dom.isActive() and not dom.hasManagedSaveImage(0):  # as a take's
                dom = self._disk_only(spec)
            no_snapshot = binding().VIR_ERR_NO_DOMAIN_SNAPSHOT
            return deleted(found(lambda: dom.snapshotLookupByName(name, 0), no_snapshot))

        await self.boot_files(spec)  # named by the definition _disk_only makes
        done: bool = await self._call("snapshot-delete", delete)
        return done
