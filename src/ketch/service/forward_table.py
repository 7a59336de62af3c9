"""The forward table's rows and the pure rules behind them: which listeners, which host port.

Used by the forwarder (:mod:`ketch.service.forward_watch`) and the use cases
(:mod:`ketch.service.forwards`).  :func:`choose_port` and :func:`not_forwarded`
are pure; :func:`port_free` and :func:`any_free_port` ask the host's socket
layer, as QEMU will when it binds.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ketch.host.hostfwd import HostFwd
from ketch.model import ForwardSpec, Protocol
from ketch.runtime import listeners as ls

Kind = Literal["automatic", "explicit"]
AUTOMATIC: Kind = "automatic"
EXPLICIT: Kind = "explicit"
SSH_GUEST_PORT = 22
#: Client ports of DHCP: bound, but nobody connects to them.
IGNORED_UDP = frozenset({68, 546})


@dataclass(frozen=True)
class Row:
    """One forward of an instance as ``info`` shows it (``host_port`` None: not forwarded)."""

    protocol: Protocol
    host_ip: str
    host_port: int | None
    guest_port: int
    kind: Kind
    guest_address: str  # what the guest listens on ("" for an explicit forward)
    active: bool
    note: str = ""


@dataclass
class Status:
    """What one watcher knows of its instance (read back from QEMU at every session)."""

    pid: int | None = None
    active: dict[tuple[Protocol, str, int], Row] = field(default_factory=dict)
    refused: dict[tuple[str, Protocol, int], Row] = field(default_factory=dict)
    watching: bool = False
    guest_ipv4: tuple[str, ...] | None = None  # the guest's addresses, in this session


def port_free(protocol: Protocol, host_ip: str, port: int) -> bool:
    """Can a socket of ``protocol`` bind ``host_ip:port`` now (SO_REUSEADDR, as QEMU)?"""
    kind = socket.SOCK_STREAM if protocol is Protocol.TCP else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host_ip, port))
        except OSError:
            return False
    return True


def any_free_port(protocol: Protocol, taken: set[int]) -> int:
    """A loopback port of ``protocol`` nothing holds and no instance uses."""
    kind = socket.SOCK_STREAM if protocol is Protocol.TCP else socket.SOCK_DGRAM
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port
    raise OSError("no free loopback port")


def choose_port(
    guest_port: int,
    *,
    taken: set[int],
    privileged_ok: bool,
    is_free: Callable[[int], bool],
    pick: Callable[[], int],
) -> tuple[int, str]:
    """The host port for an automatic forward of ``guest_port``, and why it is another one.

    The same port when it can be had; otherwise ``pick()``'s, with the reason:
    privileged without root, already forwarded (another instance, an SSH port,
    an explicit forward), or taken by another program.
    """
    if guest_port < 1024 and not privileged_ok:
        why = f"port {guest_port} is privileged and ketchd does not run as root"
    elif guest_port in taken:
        why = f"host port {guest_port} is already forwarded (another instance or rule)"
    elif not is_free(guest_port):
        why = f"host port {guest_port} is taken by another program"
    else:
        return guest_port, ""
    port = pick()
    return port, f"{why}; forwarded from {port} instead"


def not_forwarded(listener: ls.Listener) -> str | None:
    """Why a guest listener gets no automatic forward (None: it gets one)."""
    if listener.protocol is Protocol.TCP and listener.port == SSH_GUEST_PORT:
        return "ketch's own SSH port"
    if listener.protocol is Protocol.UDP and listener.port in IGNORED_UDP:
        return "a DHCP client's port"
    if listener.scope == "loopback":
        return (
            f"bound to the guest's {listener.address} only: QEMU's user networking "
            "delivers to 10.0.2.15; bind 0.0.0.0 in the guest to have it forwarded"
        )
    if listener.scope == "other":
        return f"bound to {listener.address}, not an address QEMU's user networking reaches"
    return None


def matches(spec_fwd: ForwardSpec, fwd: HostFwd) -> bool:
    return (
        spec_fwd.protocol is fwd.protocol
        and spec_fwd.host_ip == fwd.host_ip
        and spec_fwd.host_port == fwd.host_port
        and spec_fwd.guest_port == fwd.guest_port
    )


def as_hostfwd(f: ForwardSpec) -> HostFwd:
    return HostFwd(f.protocol, f.host_ip, f.host_port, f.guest_port)
