"""QEMU user networking's host forwards through HMP (pure: commands and their replies).

ketch adds and removes forwards in a running QEMU with HMP ``hostfwd_add`` and
``hostfwd_remove`` (sent through QMP's ``human-monitor-command``), so the bytes
of a forwarded connection go through QEMU's slirp and never through Python.
QEMU keeps them for as long as it runs: a new ketchd reads them back with
``info usernet`` (:func:`parse_usernet`) instead of remembering them.

HMP answers in text: an empty reply means ``hostfwd_add`` worked, anything
else is QEMU's error (``Could not set up host forwarding rule ...`` when the
host port is taken).  Recorded replies of QEMU 7.2 are in the unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from ketch.model import Protocol

#: The user-mode netdev of every instance (``-netdev user,id=net0`` in ``host/qemu.py``).
NETDEV = "net0"
#: Where QEMU's user networking delivers a forward with no guest address given.
GUEST_ADDRESS = "10.0.2.15"
MAX_USERNET = 64 * 1024  # characters of ``info usernet`` read (every socket of the guest)


@dataclass(frozen=True, order=True)
class HostFwd:
    """One host forward as QEMU has it."""

    protocol: Protocol
    host_ip: str
    host_port: int
    guest_port: int
    guest_ip: str = GUEST_ADDRESS

    @property
    def key(self) -> tuple[Protocol, str, int]:
        """What identifies the forward in QEMU (and to ``hostfwd_remove``)."""
        return (self.protocol, self.host_ip, self.host_port)


def add_command(fwd: HostFwd) -> str:
    """The HMP line that adds ``fwd`` (delivered to QEMU's default guest address)."""
    return (
        f"hostfwd_add {NETDEV} {fwd.protocol.value}:{fwd.host_ip}:{fwd.host_port}-:{fwd.guest_port}"
    )


def remove_command(fwd: HostFwd) -> str:
    """The HMP line that removes ``fwd``."""
    return f"hostfwd_remove {NETDEV} {fwd.protocol.value}:{fwd.host_ip}:{fwd.host_port}"


def add_error(reply: str) -> str | None:
    """QEMU's error from a ``hostfwd_add`` reply; None when it worked (an empty reply)."""
    text = reply.strip()
    return text[:300] or None


def removed(reply: str) -> bool:
    """Did ``hostfwd_remove`` remove a rule?  (``... not found`` otherwise.)"""
    return reply.strip().endswith(" removed")


def parse_usernet(text: str) -> list[HostFwd]:
    """The ``HOST_FORWARD`` rows of ``info usernet``; other rows and garbage are skipped.

    A row reads ``TCP[HOST_FORWARD]  FD  SRC-ADDR SRC-PORT  DST-ADDR DST-PORT RECVQ SENDQ``;
    a source address ``*`` is ``0.0.0.0``.
    """
    found: list[HostFwd] = []
    for line in text[:MAX_USERNET].splitlines():
        words = line.split()
        if len(words) < 6 or not words[0].endswith("[HOST_FORWARD]"):
            continue
        proto = words[0].partition("[")[0].lower()
        if proto not in ("tcp", "udp"):
            continue
        _fd, src, sport, dst, dport = words[1:6]
        if not (sport.isdigit() and dport.isdigit()):
            continue
        found.append(
            HostFwd(
                protocol=Protocol(proto),
                host_ip="0.0.0.0" if src == "*" else src,
                host_port=int(sport),
                guest_port=int(dport),
                guest_ip=dst,
            )
        )
    return found
