"""The :class:`~ketch.runtime.driver.Driver` protocol on a libvirt host, over ``LibvirtDriver``.

What ``launch --host NAME`` and the core verbs use for an instance whose spec's ``host`` is
a libvirt host (``service/drivers.py`` hands it out, one per host).  The connection is
opened at the first call that needs it and kept; a call that finds it broken closes it,
so the next one opens it again.

The ketch-side files stay in the local instance directory as for the QEMU driver (the
seed's inputs, the pinned host key, known_hosts, the SSH master's socket); the disk and
the seed live in the host's pool:

- ``create_disk``: the base image uploaded (verified) and the instance's qcow2 overlay
  made on it, as volumes;
- ``start``: the first time, the seed ISO the launch wrote (``idir.seed_iso``) and a
  direct kernel boot's kernel and initrd uploaded; the domain defined from the spec
  (again at each boot that is not a resume, its UUID kept); then ``virDomainCreate``,
  which restores a managed save image when there is one (``resume``);
- on a remote host (``via``), the guest's SSH port there brought to 127.0.0.1:``ssh_port``
  here by the jump (:mod:`ketch.host.ssh.jump`): started by ``start`` and by
  :meth:`~LibvirtHost.reach` (the :class:`~ketch.runtime.driver.Reaches` protocol: before
  a client is handed the guest's address), ended by stop, suspend and purge;
- ``suspend``: a managed save (``docs/internals.md``, "Hosts", says why);
  ``delete_tag("suspend")`` discards it; ``cont`` resumes paused vCPUs;
- ``purge`` (:class:`~ketch.runtime.driver.Purges`): undefine the domain, delete its volumes;
- the snapshot tags (``create_tag``, ``apply_tag``, ``delete_tag``, ``disk_tags``): libvirt's
  domain snapshots of the shut-off domain, internal qcow2 snapshots of the disk volume,
  named by the tag (:class:`~ketch.runtime.libvirt_driver.LibvirtDriver`);
- ``copy_disk`` (clone, on the same host): a volume libvirt copies from the source's.

``observe`` never raises, as the protocol says, and waits at most ``OBSERVE_TIMEOUT``: a
host that cannot be asked in that time makes an observation with ``host_error`` (``derive``
shows Unknown with ``host-unreachable`` and the reason).  The other disk verbs (reading,
growing, checking, rebasing the disk) are the QEMU driver's only: each raises
:class:`~ketch.errors.HostUnsupported`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from ketch.errors import (
    HostUnreachable,
    HostUnsupported,
    KetchError,
    LibvirtFailed,
    NotFound,
    Timeout,
)
from ketch.host import qemu_img
from ketch.host.ssh import jump
from ketch.layout import InstanceDir
from ketch.model import DiskCheck, DiskInfo, InstanceSpec, Observation, PidStatus
from ketch.progress import Reporter
from ketch.runtime.driver import SUSPEND_TAG
from ketch.runtime.libvirt_driver import LibvirtDriver
from ketch.runtime.libvirt_pool import disk_name, seed_name
from ketch.runtime.libvirt_xml import host_port

T = TypeVar("T")

OBSERVE_TIMEOUT = 5.0  # seconds an observation waits for the host before it is unreachable


class LibvirtHost:
    """The Driver protocol for the instances of one libvirt host."""

    name = "libvirt"

    def __init__(
        self, host: str, uri: str, *, pool: str | None = None, via: jump.Via | None = None
    ) -> None:
        self.host = host
        self.uri = uri
        self.core = LibvirtDriver(uri) if pool is None else LibvirtDriver(uri, pool=pool)
        self.via = via  # a remote host: its guests' SSH ports reached through its SSH
        self._lock = asyncio.Lock()
        self._jumps: dict[str, asyncio.Lock] = {}

    async def _lv(self) -> LibvirtDriver:
        async with self._lock:
            if not self.core.connected:
                try:
                    await self.core.connect()
                    await self.core.ensure_pool()
                except KetchError:
                    await self._dropped()
                    raise
        return self.core

    async def _do(self, call: Callable[[LibvirtDriver], Awaitable[T]]) -> T:
        """``call`` on the connection; one that failed (libvirtd gone, a deadline passed)
        is dropped, so the next call opens a new one once the host answers again."""
        lv = await self._lv()
        try:
            return await call(lv)
        except (HostUnreachable, LibvirtFailed, Timeout):
            await self._dropped()
            raise

    async def _dropped(self) -> None:
        """Forget a connection that failed: the next call opens a new one."""
        with contextlib.suppress(KetchError):  # the connection is forgotten first
            await self.core.close()

    def _unsupported(self, what: str) -> NoReturn:
        raise HostUnsupported(
            f'{what} is not supported on libvirt hosts yet: host "{self.host}" (driver libvirt)',
            hint="instances on the built-in host 'local' (ketch's QEMU driver) have it",
        )

    # -- the guest's SSH port, from a remote host (host/ssh/jump.py) ---------------------

    def _jump_argv(self, spec: InstanceSpec) -> list[str] | None:
        if self.via is None:
            return None
        return jump.jump_argv(self.via, spec.ssh_port, host_port(spec))

    async def reach(self, spec: InstanceSpec, idir: InstanceDir) -> None:
        """Make the guest's SSH answer on 127.0.0.1:``ssh_port`` here: on a remote host,
        the jump started unless it runs (an earlier ketchd's counts); else nothing."""
        argv = self._jump_argv(spec)
        if argv is None:
            return
        async with self._jumps.setdefault(spec.name, asyncio.Lock()):
            if jump.running(idir.jump_pidfile, argv) is None:
                await jump.end(idir.jump_pidfile)  # one of an earlier spec (another port)
                await jump.start(argv, idir.jump_pidfile, idir.jump_log, spec.ssh_port)

    async def _unreach(self, spec: InstanceSpec, idir: InstanceDir) -> None:
        if self.via is not None:
            await jump.end(idir.jump_pidfile)

    # -- the VM --------------------------------------------------------------------------

    async def observe(
        self, spec: InstanceSpec, idir: InstanceDir, *, probe_qmp: bool = True
    ) -> Observation:
        # Bounded as a whole (the open, the pool, the look): a host that does not answer
        # makes this instance Unknown (host-unreachable) in OBSERVE_TIMEOUT, and never holds
        # up the observations of other hosts' instances, which run concurrently.
        try:
            return await asyncio.wait_for(self._do(lambda lv: lv.observe(spec)), OBSERVE_TIMEOUT)
        except TimeoutError:
            said = f"did not answer within {OBSERVE_TIMEOUT:g} s"
        except KetchError as exc:
            said = exc.message
        why = f'host "{self.host}" could not be asked: {said}'
        return Observation(None, PidStatus.NONE, None, None, None, why, True, host_error=why)

    async def start(
        self, spec: InstanceSpec, idir: InstanceDir, *, accel: str, resume: bool
    ) -> None:

        async def boot(lv: LibvirtDriver) -> None:
            # Defined again at each boot (not a resume: the saved state has its own
            # definition), so a port changed while it was stopped is the one forwarded.
            if not resume or not await lv.defined(spec):
                disk = await lv.volume(disk_name(spec.name))
                if disk is None:
                    raise NotFound(f"instance {spec.name} has no disk volume on {self.uri}")
                seed = await lv.volume(seed_name(spec.name))
                if seed is None and idir.seed_iso.exists():
                    seed = await lv.upload_seed(spec, idir.seed_iso)
                kernel, initrd = await lv.boot_files(spec)
                await lv.define(spec, disk, seed, kernel=kernel, initrd=initrd)
            else:  # the saved state's definition, with an SSH port changed meanwhile
                await lv.retarget_saved(spec)
            await lv.start(spec)

        await self._do(boot)
        await self.reach(spec, idir)

    async def powerdown(self, spec: InstanceSpec, idir: InstanceDir, *, timeout: float) -> bool:
        off = await self._do(lambda lv: lv.powerdown(spec, timeout=timeout))
        if off:
            await self._unreach(spec, idir)
        return off

    async def kill(self, spec: InstanceSpec, idir: InstanceDir) -> bool:
        await self._unreach(spec, idir)
        return await self._do(lambda lv: lv.kill(spec))

    async def suspend(
        self, spec: InstanceSpec, idir: InstanceDir, *, reporter: Reporter, timeout: float
    ) -> None:
        reporter.step(f"Saving {spec.name}'s state (libvirt managed save)")
        await self._do(lambda lv: lv.suspend(spec, timeout=timeout))
        await self._unreach(spec, idir)

    async def cont(self, spec: InstanceSpec, idir: InstanceDir) -> None:
        await self._do(lambda lv: lv.resume(spec))

    async def settle(self, spec: InstanceSpec, idir: InstanceDir, *, timeout: float) -> None:
        return None  # libvirt runs no block job ketch started

    async def delete_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        if tag == SUSPEND_TAG:  # the managed save
            await self._do(lambda lv: lv.discard_saved(spec))
        else:
            await self._do(lambda lv: lv.delete_snapshot(spec, tag))

    async def purge(self, spec: InstanceSpec, idir: InstanceDir) -> None:
        await self._unreach(spec, idir)
        await self._do(lambda lv: lv.purge(spec))

    # -- the disk ------------------------------------------------------------------------

    async def create_disk(
        self, idir: InstanceDir, *, base: Path, base_format: str, size: int
    ) -> None:
        virtual = (await qemu_img.info(base)).virtual_size

        async def make(lv: LibvirtDriver) -> None:
            vol = await lv.upload_base(base, base_format)
            await lv.create_overlay(idir.path.name, vol, base_format, max(size, virtual))

        await self._do(make)

    async def disk_info(self, idir: InstanceDir) -> DiskInfo:
        self._unsupported("reading the disk")

    async def grow_disk(self, idir: InstanceDir, size: int) -> None:
        self._unsupported("growing the disk")

    async def copy_disk(self, src: InstanceDir, dst: InstanceDir) -> None:
        """A full copy, made by libvirt on the host (no backing file, no snapshots)."""
        await self._do(
            lambda lv: lv.copy_volume(disk_name(src.path.name), disk_name(dst.path.name))
        )

    async def check_disk(self, idir: InstanceDir, *, repair_leaks: bool = False) -> DiskCheck:
        self._unsupported("checking the disk")

    async def rebase_disk(self, idir: InstanceDir, *, base: Path, base_format: str) -> None:
        self._unsupported("rebasing the disk")

    async def disk_tags(self, spec: InstanceSpec, idir: InstanceDir) -> tuple[str, ...]:
        """The domain's snapshots, as libvirt lists them (its metadata, not the qcow2's
        header: ketch reads no file on the host)."""
        return await self._do(lambda lv: lv.snapshot_names(spec))

    async def create_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        await self._do(lambda lv: lv.create_snapshot(spec, tag))

    async def apply_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        await self._do(lambda lv: lv.revert_snapshot(spec, tag))

    async def close(self) -> None:
        await self._dropped()
