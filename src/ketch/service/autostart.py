"""Use case: after a host reboot, start again the instances that were running.

ketchd records the host's boot id (``/proc/sys/kernel/random/boot_id``) in
the storage root (:data:`ketch.layout.BOOT_ID`) each time it starts.  When
the recorded one differs, the host rebooted since: every QEMU is gone, and
each instance whose intent is "running" (not deleted, not quarantined, not
opted out with ``local.<name>.autostart=false``) and whose QEMU does not run
is started again.  Suspended instances stay suspended (their intent is
"suspend"), stopped ones stopped.  Starts run in parallel in batches whose
memory fits in what the host has available (:func:`batches`; an instance
larger than that alone gets a batch of its own).

:func:`rebooted` and :func:`batches` are pure; the daemon runs the starts
(``daemon/main.py``) as ordinary start operations.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ketch.model import Intent, PidStatus
from ketch.service.context import Context

BOOT_ID_SOURCE = Path("/proc/sys/kernel/random/boot_id")
AUTOSTART = "autostart"  # the property of local.<instance>.autostart


def setting_key(name: str) -> str:
    return f"local.{name}.{AUTOSTART}"


def current_boot_id(source: Path = BOOT_ID_SOURCE) -> str | None:
    try:
        return source.read_text().strip() or None
    except OSError:
        return None


def rebooted(recorded: str | None, current: str | None) -> bool:
    """Did the host reboot since the boot id was recorded?  Unknown counts as no (pure)."""
    return recorded is not None and current is not None and recorded != current


def record_boot_id(path: Path, current: str | None) -> str | None:
    """Write ``current`` to ``path``; return what was recorded before (None when nothing)."""
    try:
        before: str | None = path.read_text().strip() or None
    except OSError:
        before = None
    if current is not None and current != before:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        with contextlib.suppress(OSError):
            tmp.write_text(current + "\n")
            os.replace(tmp, path)
    return before


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int:
    """``MemAvailable`` in bytes (0 when unknown: then one instance per batch)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def batches(wanted: list[tuple[str, int]], available: int) -> list[list[str]]:
    """Group ``(name, memory)`` into batches whose memory fits in ``available`` (pure).

    In the given order; a batch holds at least one instance, so one larger
    than ``available`` is started alone.
    """
    out: list[list[str]] = []
    used = 0
    for name, memory in wanted:
        if out and used + memory <= available:
            out[-1].append(name)
            used += memory
        else:
            out.append([name])
            used = memory
    return out


async def candidates(ctx: Context) -> list[tuple[str, int]]:
    """Instances to start again after a reboot, with their memory, by name."""
    out = []
    for r in ctx.store.all():
        name = r.spec.name
        if r.deleted or r.quarantine or r.intent is not Intent.RUN:
            continue
        if ctx.store.get_setting(setting_key(name)) == "false":
            continue
        obs = await ctx.driver_for(r.spec).observe(r.spec, ctx.root.instance(name), probe_qmp=False)
        if obs.pid_status is PidStatus.OURS:
            continue
        out.append((name, r.spec.memory))
    return out
