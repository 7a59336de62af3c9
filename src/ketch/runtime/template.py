"""Warm launch, QEMU's side: saving a booted guest as a template, starting clones of it.

A template (QEMU's ``docs/system/vm-templating.rst``): the guest's RAM is a
file (``memory-backend-file``, ``share=on``), so once the guest agent says it
is idle (``runtime/warm_guest.py``) the save is ``stop``, ``x-ignore-shared``,
``migrate`` of the device state alone to a file, ``quit``.  A clone maps the
same file ``share=off`` (private copy-on-write: the template is never written,
the clones share its pages), starts with ``-incoming defer -S`` on a copy of
the golden disk, loads the device state, grows its disk, runs, and gets its
identity through the agent's virtio-serial port: fresh entropy first.

A warm instance keeps this device layout (the agent's port, the named RAM
block, the VM generation ID) while it has saved state: a suspended one is
resumed in the same layout (plain RAM); a cold start drops it
(:data:`ketch.layout.WARM_RECORD` says which).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ketch.errors import HostCommandError, KetchError
from ketch.host import firmware, qemu, qemu_img, qmp
from ketch.layout import FILE_MODE, InstanceDir, TemplateDir
from ketch.model import BootSpec, InstanceSpec
from ketch.runtime import mount_ports, warm_guest
from ketch.runtime.template_wait import (
    TemplateError,
    agent_line,
    connect_agent,
    incoming_done,
    migration_done,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ketch.runtime.network import ManagedNetwork

SAVE_TIMEOUT = 120.0  # the device state is under a MB: seconds are plenty
HANDOVER_TIMEOUT = 60.0  # the clone's agent: reseed, seed, SSH server, runcmd (tiny's)


class TemplateMismatch(TemplateError):
    """The template is fine but does not fit this instance (its NICs): launch cold, keep it."""


@dataclass(frozen=True)
class TemplateBoot:
    """What the template's guest is booted with (its key's half the runtime knows)."""

    cpus: int
    memory: int
    boot: BootSpec
    mac: str
    ssh_port: int
    extra_macs: tuple[str, ...] = ()  # one NIC each after net0 (the managed network's)
    link_up: bool = False  # net0's link up while it boots (its guest has a static address)


def shape(idir: InstanceDir) -> bool:
    """Does the instance's saved state (if any) have the warm device layout?"""
    try:
        return bool(json.loads(idir.warm_record.read_text()).get("shape"))
    except (OSError, ValueError, AttributeError):
        return False


def write_record(idir: InstanceDir, *, template: str, shape: bool) -> None:
    """The instance's warm record: which template it came from; its device layout."""
    data = json.dumps({"template": template, "shape": shape, "started": "warm"})
    tmp = idir.warm_record.with_name(f".{idir.warm_record.name}.new")
    tmp.write_text(data + "\n")
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, idir.warm_record)


def read_record(idir: InstanceDir) -> dict[str, object] | None:
    try:
        data = json.loads(idir.warm_record.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Templates:
    """The QEMU driver's warm-launch methods (a mixin of its class)."""

    if TYPE_CHECKING:
        network: ManagedNetwork | None

        async def _detach(self, spec: InstanceSpec, idir: InstanceDir, *, forget: bool) -> None: ...

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
        """Boot ``tdir``'s golden disk (made by the caller) until the agent says it is
        idle, then save the template; QEMU has ended when this returns or raises.
        With ``nice``, QEMU runs at the lowest CPU priority."""
        b = tdir.boot
        efi = await _template_uefi(tb.boot, b)
        cfg = qemu.QemuConfig(
            name=f"template-{tdir.path.name}",
            cpus=tb.cpus,
            memory=tb.memory,
            accel=accel,
            disk=tdir.disk,
            seed_iso=seed_iso,
            boot=tb.boot,
            pidfile=b.pidfile,
            qmp_socket=b.qmp_socket,
            serial_log=b.serial_log,
            ssh_port=tb.ssh_port,
            mac=tb.mac,
            memory_file=tdir.memory,
            memory_shared=True,
            agent_socket=b.agent_socket,
            vmgenid=str(uuid.uuid4()),
            paused=True,
            taps=tuple(("", mac) for mac in tb.extra_macs),
            dummy_taps=True,
            efi_code=efi.code if efi else None,
            efi_vars=b.efi_vars if efi else None,
        )
        await qemu.start(cfg, log=b.qemu_log)
        try:
            if nice:
                _lowest_priority(b.pidfile)
            reader, writer = await connect_agent(b.agent_socket)
            try:
                # No DHCP while the template lives: the user-mode network's DHCP
                # server, saved with it, must give its clones (each its own MAC) the
                # address a cold boot gets.  So the NICs' links are down, or net0's
                # is up for a guest given a static address (systemd waits for a link).
                async with qmp.connect(b.qmp_socket) as mon:
                    for i in range(1 if tb.link_up else 0, 1 + len(tb.extra_macs)):
                        await mon.execute("set_link", {"name": f"net{i}", "up": False})
                    await mon.execute("cont")
                await agent_line(reader, warm_guest.READY, timeout=timeout)
                async with qmp.connect(b.qmp_socket) as mon:
                    await mon.execute("stop")
                    await mon.execute(
                        "migrate-set-capabilities",
                        {"capabilities": [{"capability": "x-ignore-shared", "state": True}]},
                    )
                    uri = f"exec:cat > {shlex.quote(str(tdir.state))}"
                    await mon.execute("migrate", {"uri": uri})
                    await migration_done(mon, timeout=SAVE_TIMEOUT)
                    with contextlib.suppress(KetchError):
                        await mon.execute("quit")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        finally:
            await _end(b, tdir.disk, grace=5.0)
        os.chmod(tdir.disk, 0o400)  # frozen: clones copy it, nothing writes it
        os.chmod(tdir.memory, 0o400)
        if efi:
            os.chmod(b.efi_vars, 0o400)

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
        handover_timeout: float = HANDOVER_TIMEOUT,
    ) -> list[str]:
        """Start ``spec`` as a clone of ``tdir`` (its disk: a copy of the golden one,
        grown to the spec's size) and hand it its identity; returns the agent's warnings.
        ``grow``: the spec's disk is larger than the template's (its filesystem grows);
        ``clock``: the wall clock, read for the guest at the very hand-over (not before
        QEMU starts: that can take seconds on a loaded host); ``handover_timeout``:
        how long the agent may take to apply the identity (its guest's flavor).

        Raises TemplateError (QEMU ended, the disk copy removed, the NIC detached)
        when the template does not load, TemplateMismatch when it does not fit:
        the caller launches cold instead.
        """
        taps: list[tuple[str, str]] = []
        if self.network is not None:
            nic = await self.network.attach(spec, idir, resume=False)
            taps += [(nic.tap, nic.mac)] if nic else []
        if len(taps) + 1 != len(template_macs):
            await self._detach(spec, idir, forget=True)
            raise TemplateMismatch(
                f"the template has {len(template_macs)} NIC(s), this instance {len(taps) + 1}"
            )
        efi = None
        try:
            if not tdir.memory.exists() or not tdir.state.exists():
                raise OSError("its memory or state file is gone")
            await asyncio.to_thread(_copy_golden, tdir.disk, idir.disk)
            if qemu.uses_uefi(spec.boot):
                # The firmware's variables as the template's guest left them: the
                # flash's memory comes with the device state, its store must match it.
                efi = await asyncio.to_thread(firmware.find_uefi)
                await asyncio.to_thread(_copy_golden, tdir.boot.efi_vars, idir.efi_vars)
        except (OSError, KetchError) as exc:
            await self._detach(spec, idir, forget=True)
            procs_remove(idir.disk, idir.efi_vars)
            why = exc.message if isinstance(exc, KetchError) else str(exc)
            raise TemplateError(f"cannot copy the template's files: {why}") from exc
        cfg = qemu.QemuConfig(
            name=spec.name,
            cpus=spec.cpus,
            memory=spec.memory,
            accel=accel,
            disk=idir.disk,
            seed_iso=idir.seed_iso,
            boot=spec.boot,
            pidfile=idir.pidfile,
            qmp_socket=idir.qmp_socket,
            serial_log=idir.serial_log,
            ssh_port=spec.ssh_port,
            mac=spec.mac,
            memory_file=tdir.memory,
            memory_shared=False,
            agent_socket=idir.agent_socket,
            vmgenid=str(uuid.uuid4()),
            paused=True,
            incoming=True,
            taps=tuple(taps),
            efi_code=efi.code if efi else None,
            efi_vars=idir.efi_vars if efi else None,
        )
        os.close(os.open(idir.serial_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE))
        try:
            if not tdir.memory.exists() or not tdir.state.exists():
                raise TemplateError("the template's memory or state file is gone")
            await qemu.start(cfg, log=idir.qemu_log)
            with contextlib.suppress(OSError):
                os.chmod(idir.qmp_socket, FILE_MODE)
                os.chmod(idir.agent_socket, FILE_MODE)
            reader, writer = await connect_agent(idir.agent_socket)
        except (HostCommandError, TemplateError) as exc:
            await _end(idir, idir.disk)
            await self._detach(spec, idir, forget=True)
            procs_remove(idir.disk, idir.efi_vars)
            raise TemplateError(f"the template did not load: {exc.message}") from exc
        try:
            try:
                async with qmp.connect(idir.qmp_socket) as mon:
                    await mon.execute(
                        "migrate-set-capabilities",
                        {"capabilities": [{"capability": "x-ignore-shared", "state": True}]},
                    )
                    uri = f"exec:cat {shlex.quote(str(tdir.state))}"
                    await mon.execute("migrate-incoming", {"uri": uri})
                    await incoming_done(mon, timeout=SAVE_TIMEOUT)
                    # Off again: a suspend (snapshot-save) with it on writes a stream
                    # that a resume (a QEMU without it) cannot read (EINVAL).
                    await mon.execute(
                        "migrate-set-capabilities",
                        {"capabilities": [{"capability": "x-ignore-shared", "state": False}]},
                    )
                    await mon.execute(
                        "block_resize", {"node-name": qemu.DISK_NODE, "size": spec.disk}
                    )
                    for i in range(len(template_macs)):
                        await mon.execute("set_link", {"name": f"net{i}", "up": True})
                    await mon.execute("cont")
            except KetchError as exc:
                await _end(idir, idir.disk)
                await self._detach(spec, idir, forget=True)
                procs_remove(idir.disk, idir.efi_vars)
                raise TemplateError(f"the template did not load: {exc.message}") from exc
            write_record(idir, template=tdir.path.name, shape=True)
            mount_ports.mark(idir)  # started cold later: with the mounts' controller
            entropy = secrets.token_bytes(warm_guest.ENTROPY_BYTES)
            macs = list(zip(template_macs, [spec.mac, *(mac for _, mac in taps)], strict=True))
            try:
                writer.write(warm_guest.handover(entropy, clock(), macs, grow=grow))
                await writer.drain()
                return await agent_line(reader, warm_guest.DONE, timeout=handover_timeout)
            except (KetchError, OSError) as exc:
                # A guest that did not take its identity is never kept: it is the template.
                await _end(idir, idir.disk)
                await self._detach(spec, idir, forget=True)
                procs_remove(idir.disk, idir.warm_record, idir.efi_vars)
                why = exc.message if isinstance(exc, KetchError) else str(exc)
                raise TemplateError(f"the clone did not take its identity: {why}") from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def warm_config(
        self, cfg: qemu.QemuConfig, idir: InstanceDir, *, resume: bool
    ) -> qemu.QemuConfig:
        """A QEMU config in the warm layout when the instance resumes saved warm state."""
        from dataclasses import replace

        if not resume or not shape(idir):
            return cfg
        return replace(
            cfg, memory_ram=True, agent_socket=idir.agent_socket, vmgenid=str(uuid.uuid4())
        )


async def _template_uefi(boot: BootSpec, b: InstanceDir) -> firmware.Uefi | None:
    """The firmware of a template booted through UEFI, and its variable store made
    (a copy of the firmware's template, as an instance's first boot has); else None."""
    if not qemu.uses_uefi(boot):
        return None
    efi = await asyncio.to_thread(firmware.find_uefi)
    await asyncio.to_thread(_copy_golden, efi.vars_template, b.efi_vars)
    return efi


async def _end(b: InstanceDir, disk: Path, *, grace: float = 0.0) -> None:
    """End the QEMU of ``b`` on ``disk`` (a template being made, a clone that failed
    to load), after up to ``grace`` seconds for it to quit by itself."""
    from ketch.host import procs

    pid = procs.read_pidfile(b.pidfile)
    argv = procs.cmdline(pid) if pid else None
    if pid and argv and qemu.argv_matches(argv, disk) and not await procs.wait_exit(pid, grace):
        await asyncio.to_thread(procs.terminate, pid, expect=argv)
    procs.remove_quietly(b.pidfile, b.qmp_socket, b.agent_socket)


def _lowest_priority(pidfile: Path) -> None:
    from ketch.host import procs

    pid = procs.read_pidfile(pidfile)
    if pid:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, 19)


def procs_remove(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _copy_golden(src: Path, dst: Path) -> None:
    """An owner-only copy of a template's file, the instance's own, put in place at once:
    the golden disk (an overlay on the image, as the golden disk is: it survives the
    template), a UEFI variable store."""
    tmp = dst.with_name(f".{dst.name}.new")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, dst)


async def golden_size(path: Path) -> int:
    return (await qemu_img.info(path, fmt="qcow2")).virtual_size
