"""iproute2 (``ip``): links, addresses, routes, TAPs and bridges.

Three parts, as every host wrapper: the argv builders (pure), :func:`ip`
which runs one (in the C locale, checked; a missing ``ip`` names its
package), and the parsers of ``ip -j`` JSON (pure, tested on recorded
output).  Nothing here decides anything: :mod:`ketch.runtime.network` does.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ketch.host.run import Completed, run

IP = "ip"
IFNAMSIZ = 15  # the longest interface name Linux takes


@dataclass(frozen=True)
class Link:
    """One network interface, as ``ip -d -j link show`` describes it."""

    name: str
    kind: str  # "bridge", "tun", "veth", "" for a plain device (ethernet), "loopback"
    mac: str
    up: bool  # administratively up (the UP flag)
    master: str | None = None
    tap: bool = False  # a tun/tap device in TAP mode
    bus: str = ""  # the parent device's bus ("pci", "virtio", "usb"): a physical device


@dataclass(frozen=True)
class Address:
    """One address of an interface (``ip -j addr show``)."""

    ifname: str
    family: str  # "inet" or "inet6"
    local: str
    prefixlen: int

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(f"{self.local}/{self.prefixlen}")


# -- argv (pure) ------------------------------------------------------------------------------


def valid_ifname(name: str) -> bool:
    """Would Linux take ``name`` as an interface name (and is it safe in an argv)?"""
    return (
        0 < len(name) <= IFNAMSIZ
        and name not in (".", "..")
        and not name.startswith("-")
        and all(c.isascii() and (c.isalnum() or c in "-_.") for c in name)
    )


def _name(name: str) -> str:
    if not valid_ifname(name):
        raise ValueError(f"not an interface name: {name!r}")
    return name


def links_argv(name: str | None = None) -> list[str]:
    argv = [IP, "-d", "-j", "link", "show"]
    return [*argv, "dev", _name(name)] if name else argv


def addrs_argv(name: str | None = None) -> list[str]:
    argv = [IP, "-j", "addr", "show"]
    return [*argv, "dev", _name(name)] if name else argv


def routes_argv() -> list[str]:
    return [IP, "-j", "-4", "route", "show", "table", "all"]


def bridge_add_argv(name: str) -> list[str]:
    return [IP, "link", "add", "name", _name(name), "type", "bridge"]


def addr_add_argv(name: str, cidr: str) -> list[str]:
    iface = ipaddress.ip_interface(cidr)
    return [IP, "addr", "replace", str(iface), "dev", _name(name)]


def tap_add_argv(name: str) -> list[str]:
    return [IP, "tuntap", "add", "dev", _name(name), "mode", "tap", "vnet_hdr"]


def link_set_argv(name: str, *, master: str | None = None, up: bool = True) -> list[str]:
    argv = [IP, "link", "set", "dev", _name(name)]
    if master is not None:
        argv += ["master", _name(master)]
    return [*argv, "up" if up else "down"]


def link_del_argv(name: str) -> list[str]:
    return [IP, "link", "del", "dev", _name(name)]


# -- parsing (pure) ---------------------------------------------------------------------------


def _json_list(text: str) -> list[dict[str, object]]:
    text = text.strip()
    if not text:
        return []
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("ip -j printed something other than a list")
    return [d for d in data if isinstance(d, dict)]


def parse_links(text: str) -> list[Link]:
    """``ip -d -j link show`` → links (entries without a name are skipped)."""
    links = []
    for d in _json_list(text):
        name = d.get("ifname")
        if not isinstance(name, str):
            continue
        info = d.get("linkinfo")
        kind = ""
        tap = False
        if isinstance(info, dict):
            kind = str(info.get("info_kind", ""))
            data = info.get("info_data")
            if kind == "tun" and isinstance(data, dict):
                tap = data.get("type") == "tap"
        if d.get("link_type") == "loopback":
            kind = "loopback"
        flags = d.get("flags")
        master = d.get("master")
        links.append(
            Link(
                name=name,
                kind=kind,
                mac=str(d.get("address", "")),
                up=isinstance(flags, list) and "UP" in flags,
                master=master if isinstance(master, str) else None,
                tap=tap,
                bus=str(d.get("parentbus", "")),
            )
        )
    return links


def parse_addrs(text: str) -> list[Address]:
    """``ip -j addr show`` → every address of every interface."""
    found = []
    for d in _json_list(text):
        name = d.get("ifname")
        infos = d.get("addr_info")
        if not isinstance(name, str) or not isinstance(infos, list):
            continue
        for a in infos:
            if not isinstance(a, dict):
                continue
            local, plen, family = a.get("local"), a.get("prefixlen"), a.get("family")
            if isinstance(local, str) and isinstance(plen, int) and isinstance(family, str):
                found.append(Address(name, family, local, plen))
    return found


def parse_routes(text: str) -> list[ipaddress.IPv4Network]:
    """``ip -j -4 route show`` → the destination networks (``default`` is 0.0.0.0/0)."""
    nets = []
    for d in _json_list(text):
        dst = d.get("dst")
        if not isinstance(dst, str):
            continue
        if dst == "default":
            dst = "0.0.0.0/0"
        try:
            nets.append(ipaddress.IPv4Network(dst, strict=False))
        except ValueError:
            continue  # multicast "ff00::/8" style or a type we do not use
    return nets


def default_route_devices(text: str) -> list[str]:
    """The devices of the default routes in ``ip -j -4 route show`` output."""
    return [
        str(d["dev"])
        for d in _json_list(text)
        if d.get("dst") == "default" and isinstance(d.get("dev"), str)
    ]


def wireless(name: str, sys_net: Path = Path("/sys/class/net")) -> bool:
    """Is the interface a Wi-Fi device (``/sys/class/net/NAME/wireless`` or ``phy80211``)?"""
    return (sys_net / name / "wireless").exists() or (sys_net / name / "phy80211").exists()


# -- running ----------------------------------------------------------------------------------


async def ip(argv: Sequence[str], *, check: bool = True) -> Completed:
    """Run one ``ip`` argv built above (C locale, 30 s deadline)."""
    from ketch.errors import HostCommandError

    try:
        return await run(list(argv), timeout=30.0, check=check, env={"LC_ALL": "C"})
    except HostCommandError as exc:
        if exc.returncode is None:
            exc.hint = "install the Debian package iproute2 (apt-get install iproute2)"
        raise


async def links(name: str | None = None) -> list[Link]:
    """The interfaces (or just ``name``: empty when it does not exist)."""
    done = await ip(links_argv(name), check=name is None)
    return parse_links(done.text) if done.returncode == 0 else []


async def addrs(name: str | None = None) -> list[Address]:
    done = await ip(addrs_argv(name), check=name is None)
    return parse_addrs(done.text) if done.returncode == 0 else []


async def routes() -> list[ipaddress.IPv4Network]:
    return parse_routes((await ip(routes_argv())).text)
