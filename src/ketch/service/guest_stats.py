"""What ``info`` shows from inside a running guest: load, memory, disk, release.

One SSH round trip per instance, with a short deadline; a guest that does not
answer gets an entry in ``errors`` instead of these fields.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ketch.errors import KetchError
from ketch.host import ssh
from ketch.sshtarget import SshTarget

SCRIPT = (
    "cat /proc/loadavg; "
    "grep -E '^(MemTotal|MemAvailable):' /proc/meminfo; "
    "df -k / | tail -n 1; "
    '(. /etc/os-release 2>/dev/null && echo "PRETTY_NAME=$PRETTY_NAME")'
)
TIMEOUT = 10.0


@dataclass(frozen=True)
class GuestStats:
    """What SCRIPT found; a part the guest did not give is empty (``None``, ``()``, ``""``)."""

    release: str = ""
    load: tuple[float, ...] = ()
    mem_total: int | None = None  # bytes
    mem_used: int | None = None
    disk_total: int | None = None
    disk_used: int | None = None


NONE = GuestStats()


def parse(text: str) -> GuestStats:
    """Parse SCRIPT's output (pure).  Missing parts are left empty."""
    release = ""
    load: tuple[float, ...] = ()
    disk: tuple[int, int] | None = None
    mem: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if line.startswith("PRETTY_NAME="):
            release = line.partition("=")[2].strip()
        elif fields[0] in ("MemTotal:", "MemAvailable:") and len(fields) >= 2:
            with contextlib.suppress(ValueError):
                mem[fields[0][:-1]] = int(fields[1]) * 1024
        elif not load and len(fields) >= 5 and "/" in fields[3]:
            with contextlib.suppress(ValueError):
                load = tuple(float(x) for x in fields[:3])
        elif len(fields) >= 6 and fields[-1] == "/" and fields[1].isdigit():
            with contextlib.suppress(ValueError):
                disk = int(fields[1]) * 1024, int(fields[2]) * 1024
    both = "MemTotal" in mem and "MemAvailable" in mem
    return GuestStats(
        release=release,
        load=load,
        mem_total=mem["MemTotal"] if both else None,
        mem_used=mem["MemTotal"] - mem["MemAvailable"] if both else None,
        disk_total=disk[0] if disk else None,
        disk_used=disk[1] if disk else None,
    )


async def collect(target: SshTarget) -> GuestStats:
    """Run SCRIPT in the guest; raises KetchError when it cannot."""
    done = await ssh.run_in_guest(target, ["sh", "-c", SCRIPT], timeout=TIMEOUT)
    if done.returncode != 0 and not done.stdout:
        raise KetchError(
            f'cannot read statistics from "{target.name}" (ssh exited {done.returncode})'
        )
    return parse(done.text)


async def collect_quietly(target: SshTarget) -> tuple[GuestStats, str | None]:
    try:
        return await collect(target), None
    except KetchError as exc:
        return NONE, exc.message
