"""dnsmasq: DHCP and DNS on ketch's managed bridge.

The argv (pure) gives dnsmasq everything on its command line: no
configuration file is read (``--conf-file=/dev/null``), it answers only on
the bridge (``--bind-interfaces``), and every instance has a static lease,
one ``--dhcp-host=MAC,IP,NAME`` each, with an infinite lease time, so an
instance keeps its address across stop/start, suspend and restart.

The static leases are on the command line, not in a ``dhcp-hostsfile``
re-read on SIGHUP: dnsmasq drops its privileges to ``nobody`` after start-up
and then could not read a file under ketch's storage root (mode 0700), and
keeping it root would give every guest a root DHCP/DNS parser to talk to.
A changed set of leases restarts dnsmasq instead (it takes milliseconds and
keeps its lease file).  The allocation table itself is ketch's own file
(:func:`render_hosts`, :func:`parse_hosts`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DNSMASQ = "dnsmasq"


@dataclass(frozen=True)
class Host:
    """One static lease: an instance's MAC, its address and its name."""

    mac: str
    ip: str
    name: str


@dataclass(frozen=True)
class DnsmasqConfig:
    """Everything that decides one dnsmasq invocation."""

    bridge: str
    gateway: ipaddress.IPv4Interface  # the bridge's own address, with the subnet's prefix
    hosts: tuple[Host, ...]
    pidfile: Path
    leasefile: Path
    logfile: Path


@dataclass(frozen=True)
class Lease:
    """One line of dnsmasq's lease file."""

    expiry: int  # seconds since the epoch, 0 for an infinite lease
    mac: str
    ip: str
    hostname: str


def valid_mac(mac: str) -> bool:
    """A unicast MAC written as six colon-separated hex pairs."""
    parts = mac.split(":")
    if len(parts) != 6 or not all(
        len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts
    ):
        return False
    return int(parts[0], 16) & 1 == 0


def build_argv(cfg: DnsmasqConfig, *, binary: str = DNSMASQ) -> list[str]:
    """The full argv (pure).  dnsmasq forks into the background once it listens."""
    net = cfg.gateway.network
    first, last = net.network_address + 2, net.broadcast_address - 1
    argv = [
        binary,
        "--conf-file=/dev/null",
        "--strict-order",
        "--bind-interfaces",
        f"--interface={cfg.bridge}",
        "--except-interface=lo",
        f"--listen-address={cfg.gateway.ip}",
        "--no-hosts",
        f"--dhcp-range={first},{last},{net.netmask},infinite",
        "--dhcp-authoritative",
        "--dhcp-no-override",
        f"--dhcp-leasefile={cfg.leasefile}",
        f"--pid-file={cfg.pidfile}",
        f"--log-facility={cfg.logfile}",
        "--log-dhcp",
    ]
    for h in cfg.hosts:
        if not valid_mac(h.mac):
            raise ValueError(f"not a MAC address: {h.mac!r}")
        ipaddress.IPv4Address(h.ip)
        argv.append(f"--dhcp-host={h.mac.lower()},{h.ip},{_hostname(h.name)}")
    return argv


def _hostname(name: str) -> str:
    """An instance name as a DHCP host name (instance names are already hostname-safe)."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c == "-") else "-" for c in name)
    return safe.strip("-")[:63] or "instance"


def hosts_of_argv(argv: Iterable[str]) -> set[str]:
    """The ``--dhcp-host`` values of a running dnsmasq's argv (to see whether it is current)."""
    return {a.split("=", 1)[1] for a in argv if a.startswith("--dhcp-host=")}


def argv_matches(argv: list[str] | None, leasefile: Path) -> bool:
    """Is a process's argv (from /proc) a dnsmasq of this network (its lease file)?"""
    return (
        bool(argv)
        and argv is not None
        and Path(argv[0]).name == DNSMASQ
        and f"--dhcp-leasefile={leasefile}" in argv
    )


# -- ketch's allocation table and dnsmasq's lease file (pure) ---------------------------------


def render_hosts(hosts: Iterable[Host]) -> str:
    """ketch's allocation table: ``MAC,IP,NAME`` lines (dhcp-hostsfile syntax)."""
    return "".join(f"{h.mac.lower()},{h.ip},{h.name}\n" for h in hosts)


def parse_hosts(text: str) -> list[Host]:
    """Read the allocation table back; malformed lines are skipped."""
    hosts = []
    for line in text.splitlines():
        parts = line.strip().split(",")
        if len(parts) != 3 or not valid_mac(parts[0]):
            continue
        try:
            ipaddress.IPv4Address(parts[1])
        except ValueError:
            continue
        hosts.append(Host(parts[0].lower(), parts[1], parts[2]))
    return hosts


def parse_leases(text: str) -> list[Lease]:
    """dnsmasq's lease file: ``EXPIRY MAC IP HOSTNAME CLIENT-ID`` lines (IPv4 ones)."""
    leases = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[0].isdigit() or not valid_mac(parts[1]):
            continue
        try:
            ipaddress.IPv4Address(parts[2])
        except ValueError:
            continue  # a DHCPv6 line ("duid ...") or garbage
        leases.append(Lease(int(parts[0]), parts[1].lower(), parts[2], parts[3]))
    return leases
