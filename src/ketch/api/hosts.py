"""The API's models for hosts: ``host add``, ``host list``, ``host remove``.

Part of :mod:`ketch.api.models`, which re-exports every name here.
"""

from __future__ import annotations

import builtins
from typing import Annotated, Literal

from msgspec import Meta

from ketch.api.common import MAX_TEXT, Body, Reply

HostName = Annotated[str, Meta(min_length=1, max_length=63, description="a host name")]
HostUriText = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=1024,
        description="qemu:///system or qemu+ssh://[USER@]HOST[:PORT]/system",
    ),
]
PROBE_TIMEOUT = 10.0  # seconds a host's probe may take before it is shown unreachable
MAX_PROBE_TIMEOUT = 60.0  # well within the client's 120 s for one reply
ProbeTimeout = Annotated[float, Meta(gt=0, le=MAX_PROBE_TIMEOUT, description="seconds")]


class HostAddBody(Body):
    name: HostName
    uri: HostUriText
    # the private key ssh uses, an absolute path on the daemon's machine
    ssh_key: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None
    # the host keys to trust, as known_hosts lines (the client read the file)
    known_hosts: Annotated[str, Meta(max_length=MAX_TEXT)] | None = None
    timeout: ProbeTimeout = PROBE_TIMEOUT  # of the probe made once it is added


class HostsQuery(Body):
    timeout: ProbeTimeout = PROBE_TIMEOUT  # of each host's probe (all are probed at once)


class HostRow(Reply):
    """One host as ``host list`` shows it: what is stored, and what its probe found now."""

    name: str
    driver: Literal["qemu", "libvirt"]
    uri: str  # "" for local (ketch's own QEMU driver)
    state: Literal["reachable", "unreachable"]
    reason: str  # why it is unreachable ("" when reachable)
    instances: int  # instances whose host it is (deleted ones included)
    cpus: int | None
    memory_total: int | None  # bytes
    memory_free: int | None  # bytes: virNodeGetFreeMemory (local: MemAvailable)
    disk_free: int | None  # bytes: the roomiest active storage pool (local: the storage root)
    disk_pool: str | None  # that pool's name (None: local, or no active pool)
    libvirt_version: str | None  # the host's libvirtd (None: local, or unreachable)
    probe_seconds: float  # how long its probe took
    arch: str | None = None  # the machine's architecture, "x86_64" (None: unreachable)


class HostListReply(Reply):
    list: builtins.list[HostRow]


class HostAddReply(Reply):
    host: HostRow  # probed once added; an unreachable host is added all the same


class HostRemoveReply(Reply):
    name: str
