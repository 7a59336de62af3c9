"""The QEMU driver: detached QEMU processes found again through the instance dir.

Its disks are qcow2 files (the methods of :class:`~ketch.runtime.qcow2.Qcow2Disks`,
through ``qemu-img`` while no QEMU holds them); a tag of a running VM is
deleted over QMP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from ketch.errors import HostCommandError, KetchError, QMPError, Timeout
from ketch.host import firmware, procs, qemu, qemu_img, qmp
from ketch.layout import FILE_MODE, InstanceDir
from ketch.model import InstanceSpec, Observation, PidStatus, SnapshotEntry
from ketch.progress import Reporter
from ketch.runtime import virtiofs
from ketch.runtime.driver import SUSPEND_TAG
from ketch.runtime.mount_ports import MountSerial
from ketch.runtime.network import ManagedNetwork
from ketch.runtime.qcow2 import require_base
from ketch.runtime.qemu_monitor import Monitors
from ketch.runtime.template import Templates, read_record, shape, write_record

log = logging.getLogger(__name__)

LOAD_TIMEOUT = 600.0  # loading a suspended VM's state over QMP (UEFI instances)


def _vm_state_job(job_id: str) -> dict[str, Any]:
    """Arguments of a snapshot-save or -load job: the suspend tag, VM state included,
    in the instance disk and nowhere else (not in a UEFI variable store)."""
    return {
        "job-id": job_id,
        "tag": SUSPEND_TAG,
        "vmstate": qemu.DISK_NODE,
        "devices": [qemu.DISK_NODE],
    }


class QemuDriver(MountSerial, Monitors, Templates):
    """Runs each instance as one detached ``qemu-system-x86_64``; its disk is a qcow2 file."""

    name = "qemu"

    def __init__(self, network: ManagedNetwork | None = None) -> None:
        super().__init__()
        self.network = network  # None: user-mode networking only

    # -- looking ------------------------------------------------------------------

    def _pid(self, idir: InstanceDir) -> tuple[int | None, PidStatus, list[str] | None, int | None]:
        """(pid, status, argv, pid-file value when it named another process).

        The pid file is checked first; when it does not name this instance's
        QEMU but there are signs one runs (its QMP socket, a foreign pid in
        the file), /proc is searched for a QEMU on this instance's disk, so a
        clobbered pid file never loses a running VM.
        """
        pid = procs.read_pidfile(idir.pidfile)
        argv = procs.cmdline(pid) if pid else None
        ours = argv is not None and qemu.argv_matches(argv, idir.disk)
        status = procs.classify(pid, argv, ours)
        if status is not PidStatus.OURS and (
            status is PidStatus.FOREIGN or idir.qmp_socket.exists()
        ):
            for found, found_argv in procs.qemu_processes():
                if qemu.argv_matches(found_argv, idir.disk):
                    return found, PidStatus.OURS, found_argv, pid
        return pid, status, argv, None

    async def _tags(self, disk: Path) -> tuple[tuple[SnapshotEntry, ...] | None, str | None]:
        try:
            return qemu_img.read_snapshots(disk), None
        except (OSError, qemu_img.NotQcow2):
            pass
        try:
            return (await qemu_img.info(disk, timeout=10.0, fmt="qcow2")).snapshot_states, None
        except (KetchError, ValueError, KeyError) as exc:
            return None, str(exc)

    async def observe(
        self, spec: InstanceSpec, idir: InstanceDir, *, probe_qmp: bool = True
    ) -> Observation:
        pid, status, argv, pid_file = self._pid(idir)
        qmp_status: str | None = None
        qmp_error: str | None = None
        if status is PidStatus.OURS and probe_qmp:
            qmp_status, qmp_error = await self._probe_once(idir)
        disk_exists = idir.disk.exists()
        tags, tag_error = await self._tags(idir.disk) if disk_exists else ((), None)
        suspend = [t for t in tags or () if t.name == SUSPEND_TAG]
        return Observation(
            pid=pid,
            pid_status=status,
            qmp_status=qmp_status,
            qmp_error=qmp_error,
            suspend_tag=None if tags is None else any(t.vm_state_size > 0 for t in suspend),
            tag_error=tag_error,
            disk_exists=disk_exists,
            pid_cmdline=" ".join(argv)[:120] if argv and status is PidStatus.FOREIGN else None,
            pid_file=pid_file,
            suspend_tag_disk_only=bool(suspend) and all(t.vm_state_size == 0 for t in suspend),
        )

    # -- acting ---------------------------------------------------------------------

    def _config(
        self,
        spec: InstanceSpec,
        idir: InstanceDir,
        accel: str,
        efi: firmware.Uefi | None,
        *,
        loadvm: bool,
        paused: bool,
        shares: tuple[virtiofs.Share, ...] = (),
        taps: tuple[tuple[str, str], ...] = (),
    ) -> qemu.QemuConfig:
        cfg = qemu.QemuConfig(
            name=spec.name,
            cpus=spec.cpus,
            memory=spec.memory,
            accel=accel,
            disk=idir.disk,
            seed_iso=idir.seed_iso if idir.seed_iso.exists() else None,
            boot=spec.boot,
            pidfile=idir.pidfile,
            qmp_socket=idir.qmp_socket,
            serial_log=idir.serial_log,
            ssh_port=spec.ssh_port,
            mac=spec.mac,
            loadvm=SUSPEND_TAG if loadvm else None,
            efi_code=efi.code if efi else None,
            efi_vars=idir.efi_vars if efi else None,
            paused=paused,
            shares=tuple((s.tag, s.socket) for s in shares),
            taps=taps,
        )
        cfg = self.warm_config(cfg, idir, resume=loadvm or paused)
        # the mounts' controller when recorded, unless the warm layout (its own bus) is due
        return replace(cfg, mount_serial=cfg.agent_socket is None and idir.mount_serial.exists())

    async def start(
        self, spec: InstanceSpec, idir: InstanceDir, *, accel: str, resume: bool
    ) -> None:
        require_base(spec)
        self._forget_unresponsive(idir)
        procs.remove_quietly(idir.pidfile, idir.qmp_socket)
        await virtiofs.stop_all(idir)
        if not resume and shape(idir):  # a warm instance started cold: no warm layout now
            write_record(idir, template=str((read_record(idir) or {}).get("template")), shape=False)
        efi = await self._prepare_uefi(idir) if qemu.uses_uefi(spec.boot) else None
        # A UEFI instance resumes through QMP (see _load_suspended), not -loadvm.
        by_qmp = resume and efi is not None
        taps: list[tuple[str, str]] = []
        if self.network is not None:
            nic = await self.network.attach(spec, idir, resume=resume)
            taps += [(nic.tap, nic.mac)] if nic else []
            try:
                taps += await self.network.attach_extra(spec)
            except BaseException:
                await self._detach(spec, idir, forget=not resume)
                raise
        # Native mounts: a virtiofsd each, before QEMU connects to it.  A resumed
        # guest gets none (its saved state has no such device: suspend refuses
        # native mounts); a mount whose source is gone (or moved) is skipped.
        shares: list[virtiofs.Share] = []
        try:
            for mount in () if resume else virtiofs.native_mounts(spec.mounts):
                if virtiofs.source_problem(mount) is None:
                    shares.append(await virtiofs.start(idir, mount))
            cfg = self._config(
                spec,
                idir,
                accel,
                efi,
                loadvm=resume and not by_qmp,
                paused=by_qmp,
                shares=tuple(shares),
                taps=tuple(taps),
            )
            # QEMU -daemonize sets umask 027 for what it creates after forking: the
            # serial log is made owner-only beforehand (QEMU appends to it) and the
            # monitor's socket is tightened once it exists.
            os.close(os.open(idir.serial_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE))
            os.chmod(idir.serial_log, FILE_MODE)
            await qemu.start(cfg, log=idir.qemu_log)
        except BaseException:
            await virtiofs.stop_all(idir)
            await self._detach(spec, idir, forget=not resume)
            raise
        with contextlib.suppress(OSError):  # gone again if QEMU already exited
            os.chmod(idir.qmp_socket, FILE_MODE)
        if by_qmp:
            await self._load_suspended(spec, idir)

    async def _prepare_uefi(self, idir: InstanceDir) -> firmware.Uefi:
        """The firmware, and this instance's variable store, made when missing.

        A store that is gone (or was never made) is copied again from the
        firmware's template: the guest boots through the removable-media path,
        as on its first boot; a suspended guest gets its variables back from
        its saved state (see :meth:`_load_suspended`).
        """
        efi = await asyncio.to_thread(firmware.find_uefi)
        if not idir.efi_vars.exists():
            partial = idir.path / f".{idir.efi_vars.name}.{os.getpid()}"
            await asyncio.to_thread(shutil.copyfile, efi.vars_template, partial)
            os.replace(partial, idir.efi_vars)
        return efi

    async def _load_suspended(self, spec: InstanceSpec, idir: InstanceDir) -> None:
        """Load the suspend tag into a QEMU started paused (``-S``), then run it.

        ``-loadvm`` cannot resume a UEFI instance: it wants every writable
        block node to carry the tag and reads the VM state from the first one,
        the variable store (machine flash is attached before any disk).
        ``snapshot-load`` names the disk as both.  The variables come back
        with the VM state (QEMU migrates the flash's memory and writes it to
        the store on load).  On failure QEMU is ended and the tag is kept.
        """
        try:
            async with self._lock(idir), qmp.connect(idir.qmp_socket) as mon:
                await mon.run_job(
                    "snapshot-load", _vm_state_job("ketch-resume"), timeout=LOAD_TIMEOUT
                )
                await mon.execute("cont")
        except KetchError as exc:
            await self.kill(spec, idir)
            raise HostCommandError(
                ["qmp", "snapshot-load", SUSPEND_TAG], None, exc.message
            ) from exc
        except BaseException:
            await self.kill(spec, idir)
            raise

    async def powerdown(self, spec: InstanceSpec, idir: InstanceDir, *, timeout: float) -> bool:
        pid, status, _, _ = self._pid(idir)
        if status is not PidStatus.OURS or pid is None:
            return True
        async with self._lock(idir):
            try:
                async with qmp.connect(idir.qmp_socket) as mon:
                    await mon.execute("system_powerdown")
            except KetchError:
                return not procs.alive(pid)
        return await procs.wait_exit(pid, timeout)

    async def kill(self, spec: InstanceSpec, idir: InstanceDir) -> bool:
        pid, status, argv, _ = self._pid(idir)
        ended = False
        if status is PidStatus.OURS and pid is not None:
            # Ask QEMU to quit first (clean qcow2 close), then signals.  A monitor
            # that missed a deadline, or does not greet within QUIT_BUDGET (a
            # frozen QEMU: SIGTERM would wait for a SIGCONT), is not waited on:
            # SIGKILL through the verified pidfd at once.  One that is busy
            # (a hung operation holds it) or gone gets SIGTERM, then SIGKILL.
            said = "frozen" if idir.path in self._unresponsive else await self._try_quit(idir)
            if said == "frozen":
                await asyncio.to_thread(procs.kill_now, pid, expect=argv)
            elif said == "sent" and await procs.wait_exit(pid, 3.0):
                pass
            else:
                await asyncio.to_thread(procs.terminate, pid, expect=argv)
            ended = True
        self._forget_unresponsive(idir)
        procs.remove_quietly(idir.pidfile, idir.qmp_socket)
        await virtiofs.stop_all(idir)  # native mounts' daemons end with their QEMU
        await self._detach(spec, idir, forget=True)
        return ended

    async def _detach(self, spec: InstanceSpec, idir: InstanceDir, *, forget: bool) -> None:
        """Remove the instance's TAP (QEMU has ended); never fails."""
        if self.network is None:
            return
        try:
            await self.network.detach(spec, idir, forget=forget)
        except Exception as exc:  # a TAP left behind is re-made at the next start
            log.warning("could not remove the TAP: %s", exc)

    async def suspend(
        self, spec: InstanceSpec, idir: InstanceDir, *, reporter: Reporter, timeout: float
    ) -> None:
        pid, status, argv, _ = self._pid(idir)
        if status is not PidStatus.OURS or pid is None:
            raise KetchError(f'instance "{spec.name}" is not running')
        async with self._lock(idir), qmp.connect(idir.qmp_socket) as mon:
            reporter.step("Pausing the guest")
            await mon.execute("stop")
            try:
                # A stale tag would make snapshot-save refuse; it is never wanted here.  The
                # disk's snapshot table (a header read) says whether there is one to drop.
                tags, _ = await self._tags(idir.disk)
                if tags is None or any(t.name == SUSPEND_TAG for t in tags):
                    await mon.run_job(
                        "snapshot-delete",
                        {"job-id": "ketch-drop-stale", "tag": SUSPEND_TAG,
                         "devices": [qemu.DISK_NODE]},
                        timeout=timeout,
                    )  # fmt: skip
                reporter.step("Saving the guest's state into its disk")
                await mon.run_job("snapshot-save", _vm_state_job("ketch-suspend"), timeout=timeout)
            except (QMPError, Timeout):
                # The guest keeps running; no partial tag is left behind.
                with contextlib.suppress(KetchError):
                    await mon.run_job(
                        "snapshot-delete",
                        {"job-id": "ketch-undo", "tag": SUSPEND_TAG, "devices": [qemu.DISK_NODE]},
                        timeout=60.0,
                    )
                with contextlib.suppress(KetchError):
                    await mon.execute("cont")
                raise
            reporter.step("Stopping QEMU")
            with contextlib.suppress(QMPError):  # quit may close the socket before replying
                await mon.execute("quit")
        if not await procs.wait_exit(pid, 30.0):
            await asyncio.to_thread(procs.terminate, pid, expect=argv)
        procs.remove_quietly(idir.pidfile, idir.qmp_socket)
        await virtiofs.stop_all(idir)
        await self._detach(spec, idir, forget=False)  # resumed with the same NIC

    async def cont(self, spec: InstanceSpec, idir: InstanceDir) -> None:
        async with self._lock(idir), qmp.connect(idir.qmp_socket) as mon:
            await mon.execute("cont")

    async def settle(self, spec: InstanceSpec, idir: InstanceDir, *, timeout: float) -> None:
        _, status, _, _ = self._pid(idir)
        if status is not PidStatus.OURS:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._lock(idir), qmp.connect(idir.qmp_socket) as mon:
            while True:
                jobs = await mon.execute("query-jobs")
                for job in jobs:
                    if job.get("status") == "concluded":
                        await mon.execute("job-dismiss", {"id": job["id"]})
                if all(j.get("status") == "concluded" for j in jobs):
                    return
                if loop.time() > deadline:
                    raise Timeout(f"QEMU jobs still running after {timeout:g} s")
                await asyncio.sleep(0.1)

    async def delete_tag(self, spec: InstanceSpec, idir: InstanceDir, tag: str) -> None:
        _, status, _, _ = self._pid(idir)
        if status is PidStatus.OURS:
            async with self._lock(idir), qmp.connect(idir.qmp_socket) as mon:
                await mon.run_job(
                    "snapshot-delete",
                    {"job-id": f"ketch-delete-{tag}", "tag": tag, "devices": [qemu.DISK_NODE]},
                    timeout=120.0,
                )
            return
        await self.remove_tag(idir, tag)
