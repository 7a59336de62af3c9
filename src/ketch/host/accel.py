"""Choosing the accelerator: KVM only when a bounded probe shows it boots a kernel.

On some hosts ``/dev/kvm`` exists but guests hang under it (nested
virtualisation without the features Linux wants).  The probe boots a Linux
kernel with no root filesystem under KVM: a working KVM reaches the kernel's
"cannot mount root" panic and, with ``panic=-1 -no-reboot``, QEMU exits in
well under a second.  If QEMU has not exited by the deadline, or prints no
kernel output, KVM is declared unusable and ketch uses TCG.  The result is
cached with what it depends on (QEMU version, host kernel).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ketch.errors import HostCommandError
from ketch.host.procs import remove_quietly
from ketch.host.qemu import QEMU_SYSTEM

PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" or "tcg"
    reason: str
    qemu: str  # the QEMU binary's version line
    host_kernel: str
    probed_at: float


def probe_argv(kernel: Path, serial: Path, *, binary: str = QEMU_SYSTEM) -> list[str]:
    """A KVM guest that boots a kernel to its root-mount panic and exits."""
    return [
        binary,
        "-accel", "kvm",
        "-machine", "q35",
        "-nodefaults",
        "-display", "none",
        "-m", "128M",
        "-kernel", str(kernel),
        "-append", "console=ttyS0 panic=-1",
        "-no-reboot",
        "-serial", f"file:{serial}",
    ]  # fmt: skip


def judge(returncode: int | None, serial_text: str) -> tuple[bool, str]:
    """Pure: did the probe show a working KVM?"""
    if returncode is None:
        return False, f"a KVM guest did not finish booting within {PROBE_TIMEOUT:g} s (it hangs)"
    if "Kernel panic" in serial_text or "VFS:" in serial_text:
        return True, "a KVM guest booted a kernel"
    if returncode != 0:
        return False, f"QEMU with KVM exited {returncode}"
    return False, "a KVM guest exited without kernel output"


_VERSIONS: dict[tuple[str, float], str] = {}


async def qemu_version(binary: str = QEMU_SYSTEM) -> str:
    """QEMU's version line; asked once per binary (until the binary changes)."""
    path = shutil.which(binary) or binary
    try:
        key = (path, os.stat(path).st_mtime)
    except OSError:
        key = (path, 0.0)
    if key not in _VERSIONS:
        try:
            proc = await asyncio.create_subprocess_exec(
                path, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
            )
        except OSError as exc:
            raise HostCommandError(
                [path, "--version"],
                None,
                str(exc),
                hint="install qemu-system-x86 (scripts/install)",
            ) from exc
        out, _ = await proc.communicate()
        _VERSIONS[key] = out.decode("utf-8", "replace").splitlines()[0] if out else "unknown"
    return _VERSIONS[key]


async def probe(kernel: Path | None) -> AccelChoice:
    """Run the bounded KVM probe (or decide without it)."""
    version = await qemu_version()
    host = platform.release()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return AccelChoice(
            "tcg", "/dev/kvm is missing or not accessible", version, host, time.time()
        )
    if kernel is None:
        return AccelChoice(
            "tcg", "KVM not probed: no kernel to probe with yet", version, host, time.time()
        )
    with tempfile.TemporaryDirectory(prefix="ketch-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        proc = await asyncio.create_subprocess_exec(
            *probe_argv(kernel, serial),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            stdin=asyncio.subprocess.DEVNULL,
        )
        returncode: int | None
        try:
            returncode = await asyncio.wait_for(proc.wait(), PROBE_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            returncode = None
        text = serial.read_text(errors="replace") if serial.exists() else ""
        remove_quietly(serial)
    ok, reason = judge(returncode, text)
    return AccelChoice("kvm" if ok else "tcg", reason, version, host, time.time())


def load_cached(path: Path, *, qemu: str) -> AccelChoice | None:
    """A cached choice, if it was made for this QEMU and this host kernel."""
    try:
        data = json.loads(path.read_text())
        choice = AccelChoice(**data)
    except (OSError, ValueError, TypeError):
        return None
    if choice.qemu != qemu or choice.host_kernel != platform.release():
        return None
    if choice.reason.startswith("KVM not probed"):
        return None
    return choice


def save_cached(path: Path, choice: AccelChoice) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(choice), indent=2))
    tmp.replace(path)
