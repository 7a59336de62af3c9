"""What ``info`` shows from inside a running guest: load, memory, disk, release.

One SSH round trip per instance, with a short deadline; a guest that does not
answer gets an entry in ``errors`` instead of these fields.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ketch.errors import KetchError
from ketch.host import ssh
from ketch.model import SshTarget

SCRIPT = (
    "cat /proc/loadavg; "
    "grep -E '^(MemTotal|MemAvailable):' /proc/meminfo; "
    "df -k / | tail -n 1; "
    '(. /etc/os-release 2>/dev/null && echo "PRETTY_NAME=$PRETTY_NAME")'
)
TIMEOUT = 10.0


def parse(text: str) -> dict[str, Any]:
    """Parse SCRIPT's output (pure).  Missing parts are left out."""
    out: dict[str, Any] = {}
    mem: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if line.startswith("PRETTY_NAME="):
            out["release"] = line.partition("=")[2].strip()
        elif fields[0] in ("MemTotal:", "MemAvailable:") and len(fields) >= 2:
            mem[fields[0][:-1]] = int(fields[1]) * 1024
        elif "load" not in out and len(fields) >= 5 and "/" in fields[3]:
            with contextlib.suppress(ValueError):
                out["load"] = [float(x) for x in fields[:3]]
        elif len(fields) >= 6 and fields[-1] == "/" and fields[1].isdigit():
            out["disk_total"] = int(fields[1]) * 1024
            out["disk_used"] = int(fields[2]) * 1024
    if "MemTotal" in mem and "MemAvailable" in mem:
        out["mem_used"] = mem["MemTotal"] - mem["MemAvailable"]
        out["mem_total"] = mem["MemTotal"]
    return out


async def collect(target: SshTarget) -> dict[str, Any]:
    """Run SCRIPT in the guest; raises KetchError when it cannot."""
    done = await ssh.run_in_guest(target, ["sh", "-c", SCRIPT], timeout=TIMEOUT)
    if done.returncode != 0 and not done.stdout:
        raise KetchError(
            f'cannot read statistics from "{target.name}" (ssh exited {done.returncode})'
        )
    return parse(done.text)


async def collect_quietly(target: SshTarget) -> tuple[dict[str, Any], str | None]:
    try:
        return await collect(target), None
    except KetchError as exc:
        return {}, exc.message
