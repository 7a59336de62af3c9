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

Each snapshot also carries the guest's own IPv4 addresses, from
``/proc/net/fib_trie`` (its ``/32 host LOCAL`` leaves; loopback left out, at
most :data:`MAX_ADDRESSES`): what ``list`` and ``info`` show as the instance's
``ipv4``, with no command of their own in the guest.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ketch.model import Protocol

BEGIN = "@ketch-listeners"
END = "@ketch-end"
INTERVAL = 0.5  # seconds between two snapshots in the guest
FILES = ("tcp", "tcp6", "udp", "udp6")
FIB = "fib_trie"  # the guest's addresses

#: POSIX sh (busybox's too).  When ssh goes away the next ``echo`` fails and the loop ends.
WATCH_SCRIPT = (
    "while :; do echo " + BEGIN + "; for f in " + " ".join((*FILES, FIB)) + '; do echo "# $f"; '
    "cat /proc/net/$f 2>/dev/null; done; echo " + END + " || exit 0; "
    f"sleep {INTERVAL} 2>/dev/null || sleep 1; done"
)

MAX_LINE = 512  # bytes: a /proc/net line is about 150
MAX_LINES = 4096  # lines per snapshot (4 headers and 4 column lines included)
MAX_LISTENERS = 256
MAX_ADDRESSES = 32

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
    addresses: tuple[str, ...] | None = None  # the guest's IPv4s; None: it printed no fib_trie


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


@dataclass
class FibReader:
    """The guest's own addresses from ``/proc/net/fib_trie``, fed line by line.

    A leaf line (``|-- 10.0.2.15``) followed by ``/32 host LOCAL`` is one of
    them (each appears in the Main and the Local table: taken once); loopback
    is left out, and at most :data:`MAX_ADDRESSES` are kept.
    """

    found: list[str] = field(default_factory=list)
    lines: int = 0
    truncated: bool = False
    _leaf: str | None = None

    def feed(self, line: str) -> None:
        """One line, stripped."""
        self.lines += 1
        if line.startswith("|-- "):
            try:
                self._leaf = str(ipaddress.IPv4Address(line[4:]))
            except ValueError:
                self._leaf = None
            return
        if not line.startswith("/"):
            self._leaf = None
            return
        leaf = self._leaf
        if leaf is None or line.split() != ["/32", "host", "LOCAL"] or leaf in self.found:
            return
        if ipaddress.IPv4Address(leaf).is_loopback:
            return
        if len(self.found) < MAX_ADDRESSES:
            self.found.append(leaf)
        else:
            self.truncated = True

    def addresses(self) -> tuple[str, ...]:
        return tuple(sorted(self.found, key=ipaddress.IPv4Address))


def parse_fib_trie(text: str) -> tuple[str, ...]:
    """The addresses ``/proc/net/fib_trie`` shows as the machine's own, loopback left out."""
    fib = FibReader()
    for line in text.splitlines():
        fib.feed(line.strip())
    return fib.addresses()


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
    _fib: FibReader | None = None  # once the snapshot's fib_trie section began

    def feed(self, raw: bytes) -> Snapshot | None:
        """One line of output (without its newline); a :class:`Snapshot` when one ends."""
        if len(raw) > MAX_LINE:
            self._truncated = self._truncated or self._inside
            return None
        line = raw.decode("ascii", "replace").strip()
        if line == BEGIN:
            self._inside, self._file, self._lines, self._truncated = True, None, 0, False
            self._found, self._fib = set(), None
            return None
        if not self._inside:
            return None
        if line == END:
            self._inside = False
            fib = self._fib
            addresses = fib.addresses() if fib is not None and fib.lines else None
            truncated = self._truncated or (fib is not None and fib.truncated)
            return Snapshot(frozenset(self._found), truncated, addresses)
        self._lines += 1
        if self._lines > MAX_LINES:
            self._truncated = True
            return None
        if line.startswith("# "):
            name = line[2:]
            self._file = name if name in (*FILES, FIB) else None
            if name == FIB:
                self._fib = FibReader()
            return None
        if self._file == FIB:
            assert self._fib is not None
            self._fib.feed(line)
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
