"""Where ``ketch launch`` without ``--host`` runs an instance: the host with the most free memory.

Only when at least one libvirt host is configured: with none, a launch without ``--host``
is ``local``'s, as it always was (nothing is probed, nothing is paid), and ``--host NAME``
always chooses.  Otherwise every host is probed now, all at once, each within the bound
``host list`` uses (:func:`ketch.service.hosts.listing`: the same rows, so a launch places
by the figures ``host list`` shows), and :func:`place` (pure) picks among the hosts that

- answered,
- have the image's architecture (an image ketch resolves is for the daemon's machine:
  simplestreams is asked for its architecture, ``tiny`` and ``debian-12`` are built for
  it; a libvirt host's is ``virNodeGetInfo``'s model), and
- can honour the launch's options (:func:`ketch.service.drivers.refuse_launch`: the
  libvirt driver has no mounts, extra networks, forwards or UEFI yet, so such a launch
  goes to ``local``),

the one with the most free memory (``virNodeGetFreeMemory``; ``local``: ``MemAvailable``);
on a tie ``local`` first, then by name.  When none qualifies the instance goes to
``local``, which can always take it.  The launch says where it went and why, in one
progress line, and ketchd's log has the exact figures it used.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ketch.api.hosts import PROBE_TIMEOUT
from ketch.api.models import HostRow
from ketch.errors import HostUnsupported
from ketch.model import LOCAL_HOST, HostState
from ketch.service.context import Context
from ketch.service.units import human

log = logging.getLogger(__name__)

# One name per architecture, whichever spelling reports it (uname, libvirt, simplestreams).
_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def arch_name(arch: str) -> str:
    """``amd64`` and ``x86_64`` are one architecture, as are ``arm64`` and ``aarch64`` (pure)."""
    return _ARCHES.get(arch.lower(), arch.lower())


@dataclass(frozen=True)
class Candidate:
    """One host as placement sees it: what its probe found, and what it cannot do."""

    name: str
    memory_free: int | None  # bytes; None: it did not answer
    arch: str | None  # what it reports (None: not known)
    refused: str | None = None  # why it cannot take this launch (its driver lacks an option)
    unreachable: str = ""  # why it did not answer


@dataclass(frozen=True)
class Placement:
    """The host chosen, and each other host with the reason it was not."""

    host: str
    memory_free: int | None
    passed: tuple[tuple[str, str], ...]  # (host, why not), in the candidates' order

    def line(self, instance: str) -> str:
        """The launch's progress line."""
        why = (
            f"the most free memory, {human(self.memory_free)}"
            if self.memory_free is not None
            else "no other host can take it"
        )
        others = "; ".join(f"{h}: {said}" for h, said in self.passed)
        return f'Placing {instance} on host "{self.host}" ({why})' + (
            f"; not on {others}" if others else ""
        )


def _why_not(c: Candidate, arch: str) -> str | None:
    if c.memory_free is None:
        return f"did not answer ({c.unreachable})" if c.unreachable else "did not answer"
    if c.arch is None:
        return "its architecture is not known"
    if arch_name(c.arch) != arch_name(arch):
        return f"it is {c.arch}, the image is {arch}"
    return c.refused


def place(candidates: Sequence[Candidate], *, arch: str) -> Placement:
    """The host with the most free memory among those that can take the launch (pure).

    Ties go to ``local``, then to the first name in alphabetical order; when no host
    qualifies, ``local``.
    """
    why = {c.name: _why_not(c, arch) for c in candidates}
    able = [c for c in candidates if why[c.name] is None and c.memory_free is not None]
    able.sort(key=lambda c: (-(c.memory_free or 0), c.name != LOCAL_HOST, c.name))
    chosen = able[0].name if able else LOCAL_HOST
    free = able[0].memory_free if able else None
    passed = []
    for c in candidates:
        if c.name == chosen:
            continue
        said = why[c.name]
        if said is None:
            said = f"{human(c.memory_free or 0)} free"
        passed.append((c.name, said))
    return Placement(chosen, free, tuple(passed))


def candidates(rows: Iterable[HostRow], refused: dict[str, str]) -> list[Candidate]:
    """``host list``'s rows as placement's candidates (``refused``: by host, from its driver)."""
    return [
        Candidate(
            name=r.name,
            memory_free=r.memory_free if r.state == HostState.REACHABLE.value else None,
            arch=r.arch,
            refused=refused.get(r.name),
            unreachable=r.reason,
        )
        for r in rows
    ]


async def choose(
    ctx: Context,
    instance: str,
    *,
    mounts: bool,
    networks: bool,
    forwards: bool,
    firmware: str | None,
    timeout: float = PROBE_TIMEOUT,
) -> Placement | None:
    """Where a launch without ``--host`` goes; None when no libvirt host is configured
    (nothing probed: the launch is ``local``'s)."""
    hosts = ctx.store.hosts()
    if not hosts or ctx.drivers is None:
        return None
    from ketch.service.drivers import refuse_launch
    from ketch.service.hosts import listing

    refused: dict[str, str] = {}
    for host in hosts:
        try:
            refuse_launch(
                host, mounts=mounts, networks=networks, forwards=forwards, firmware=firmware
            )
        except HostUnsupported as exc:
            what = exc.message.split(" is not supported")[0]
            refused[host.name] = f"{what} is not supported there yet"
    rows = (await listing(ctx, timeout)).list
    chosen = place(candidates(rows, refused), arch=platform.machine())
    log.info(
        "placement of %s: %s -> %s",
        instance,
        ", ".join(f"{r.name} free={r.memory_free} total={r.memory_total}" for r in rows),
        chosen.host,
    )
    return chosen
