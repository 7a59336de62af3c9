"""The guest's listening sockets, read from its ``/proc/net`` (pure, and the guest is hostile).

ketchd's forward watcher keeps one SSH session per running instance open, in
which :data:`WATCH_SCRIPT` prints ``/proc/net/{tcp,tcp6,udp,udp6}`` every half
second between two marker lines.  :class:`SnapshotReader` takes that output
line by line and yields the set of :class:`Listener` each complete snapshot
shows: TCP sockets in the LISTEN state, UDP sockets bound and unconnected.

What the guest prints is not trusted: a line longer than :data:`MAX_LINE` or a
snapshot with more than :data:`MAX_LINES` lines is cut off (the snapshot is
marked ``truncated``), a line that does not parse is skipped, at most
:data:`MAX_LISTENERS` listeners are taken from a snapshot.  The addresses are
decoded as an x86 guest writes them (each 32-bit word in little-endian order).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ketch.model import Protocol

BEGIN = "@ketch-listeners"
END = "@ketch-end"
INTERVAL = 0.5  # seconds between two snapshots in the guest
FILES = ("tcp", "tcp6", "udp", "udp6")

#: POSIX sh (busybox's too).  When ssh goes away the next ``echo`` fails and the loop ends.
WATCH_SCRIPT = (
    "while :; do echo " + BEGIN + "; for f in " + " ".join(FILES) + '; do echo "# $f"; '
    "cat /proc/net/$f 2>/dev/null; done; echo " + END + " || exit 0; "
    f"sleep {INTERVAL} 2>/dev/null || sleep 1; done"
)

MAX_LINE = 512  # bytes: a /proc/net line is about 150
MAX_LINES = 4096  # lines per snapshot (4 headers and 4 column lines included)
MAX_LISTENERS = 256

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"  # TCP_CLOSE: a bound UDP socket with no peer


@dataclass(frozen=True, order=True)
class Listener:
    """One listening socket in the guest."""

    protocol: Protocol
    port: int
    address: str  # as bound: "0.0.0.0", "::", "127.0.0.1", "::ffff:10.0.2.15" ...

    @property
    def scope(self) -> str:
        """``any`` (every address, or the user-net address), ``loopback``, or ``other``."""
        ip = ipaddress.ip_address(self.address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_unspecified or str(ip) == "10.0.2.15":
            return "any"
        if ip.is_loopback:
            return "loopback"
        return "other"


@dataclass(frozen=True)
class Snapshot:
    listeners: frozenset[Listener]
    truncated: bool = False


def decode_address(text: str) -> str | None:
    """``0100007F`` -> ``127.0.0.1``; 32 hex digits -> an IPv6 address; None if neither."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    if len(raw) == 16:
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        return str(ipaddress.IPv6Address(words))
    return None


def parse_line(line: str, name: str) -> Listener | None:
    """One line of ``/proc/net/NAME`` (tcp, tcp6, udp, udp6); None unless it listens."""
    words = line.split()
    if len(words) < 4 or not words[0].endswith(":"):
        return None
    local, state = words[1], words[3].upper()
    protocol = Protocol.UDP if name.startswith("udp") else Protocol.TCP
    if state != (TCP_LISTEN if protocol is Protocol.TCP else UDP_UNCONNECTED):
        return None
    addr_hex, colon, port_hex = local.partition(":")
    if not colon or len(port_hex) != 4:
        return None
    address = decode_address(addr_hex)
    if address is None or (len(addr_hex) == 32) != name.endswith("6"):
        return None
    try:
        port = int(port_hex, 16)
    except ValueError:
        return None
    if port == 0:
        return None
    return Listener(protocol=protocol, port=port, address=address)


def parse_proc_net(text: str, name: str) -> set[Listener]:
    """Every listener in one ``/proc/net`` file's text (its column line is skipped)."""
    found = set()
    for line in text.splitlines():
        got = parse_line(line, name)
        if got is not None:
            found.add(got)
    return found


@dataclass
class SnapshotReader:
    """Turns the watch script's output, line by line, into snapshots."""

    _inside: bool = False
    _file: str | None = None
    _lines: int = 0
    _truncated: bool = False
    _found: set[Listener] = field(default_factory=set)

    def feed(self, raw: bytes) -> Snapshot | None:
        """One line of output (without its newline); a :class:`Snapshot` when one ends."""
        if len(raw) > MAX_LINE:
            self._truncated = self._truncated or self._inside
            return None
        line = raw.decode("ascii", "replace").strip()
        if line == BEGIN:
            self._inside, self._file, self._lines, self._truncated = True, None, 0, False
            self._found = set()
            return None
        if not self._inside:
            return None
        if line == END:
            self._inside = False
            return Snapshot(frozenset(self._found), self._truncated)
        self._lines += 1
        if self._lines > MAX_LINES:
            self._truncated = True
            return None
        if line.startswith("# "):
            name = line[2:]
            self._file = name if name in FILES else None
            return None
        if self._file is None:
            return None
        got = parse_line(line, self._file)
        if got is not None:
            if len(self._found) < MAX_LISTENERS:
                self._found.add(got)
            else:
                self._truncated = True
        return None


def reachable(listeners: frozenset[Listener]) -> dict[tuple[Protocol, int], Listener]:
    """One listener per (protocol, port), the most reachable one (``any`` over the others)."""
    rank = {"any": 0, "other": 1, "loopback": 2}
    best: dict[tuple[Protocol, int], Listener] = {}
    for one in sorted(listeners):
        key = (one.protocol, one.port)
        if key not in best or rank[one.scope] < rank[best[key].scope]:
            best[key] = one
    return best
