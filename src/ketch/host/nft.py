"""nftables: NAT from ketch's managed bridge to the host's default route.

One table of ketch's own per bridge (``ip ketch_<bridge>``), so ketch never
touches anybody else's rules and removing it is one ``nft delete table``.
The ruleset (pure, :func:`ruleset`) masquerades what leaves the subnet for
anywhere else, and accepts forwarding from and back to the bridge (a host
whose forward chain drops by default still lets the guests out).  It is
loaded atomically with ``nft -f -``.  IPv4 forwarding is a sysctl
(:data:`IP_FORWARD`).  No iptables fallback: nftables is on every supported
host (Debian 12's iptables is itself nftables underneath).
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from ketch.errors import HostCommandError
from ketch.host.ip import valid_ifname
from ketch.host.run import Completed, run

NFT = "nft"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def table_name(bridge: str) -> str:
    if not valid_ifname(bridge):
        raise ValueError(f"not an interface name: {bridge!r}")
    return "ketch_" + bridge.replace("-", "_").replace(".", "_")


def ruleset(bridge: str, subnet: ipaddress.IPv4Network) -> str:
    """The table for ``bridge`` (pure); replaces an older one of the same name."""
    table = table_name(bridge)
    return (
        f"table ip {table}\n"
        f"delete table ip {table}\n"
        f"table ip {table} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    ip saddr {subnet} ip daddr != {subnet} masquerade\n"
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f'    iifname "{bridge}" accept\n'
        f'    oifname "{bridge}" ct state established,related accept\n'
        "  }\n"
        "}\n"
    )


def load_argv() -> list[str]:
    return [NFT, "-f", "-"]


def list_argv(bridge: str) -> list[str]:
    return [NFT, "-j", "list", "table", "ip", table_name(bridge)]


def delete_argv(bridge: str) -> list[str]:
    return [NFT, "delete", "table", "ip", table_name(bridge)]


def parse_masquerades(text: str) -> list[str]:
    """``nft -j list table`` → the source networks the table masquerades (pure)."""
    data = json.loads(text)
    found = []
    for item in data.get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict):
            continue
        exprs = rule.get("expr", [])
        if not any(isinstance(e, dict) and "masquerade" in e for e in exprs):
            continue
        for e in exprs:
            match = e.get("match") if isinstance(e, dict) else None
            if not isinstance(match, dict) or match.get("op") != "==":
                continue
            left, right = match.get("left"), match.get("right")
            if (
                isinstance(left, dict)
                and left.get("payload", {}).get("field") == "saddr"
                and isinstance(right, dict)
                and "prefix" in right
            ):
                p = right["prefix"]
                found.append(f"{p['addr']}/{p['len']}")
    return found


async def _nft(argv: list[str], *, input: bytes | None = None, check: bool = True) -> Completed:
    try:
        return await run(argv, timeout=30.0, input=input, check=check, env={"LC_ALL": "C"})
    except HostCommandError as exc:
        if exc.returncode is None:
            exc.hint = "install the Debian package nftables (apt-get install nftables)"
        raise


async def apply(bridge: str, subnet: ipaddress.IPv4Network) -> None:
    await _nft(load_argv(), input=ruleset(bridge, subnet).encode())


async def masquerades(bridge: str) -> list[str]:
    """The subnets ketch's table for ``bridge`` masquerades; empty when it is missing."""
    done = await _nft(list_argv(bridge), check=False)
    if done.returncode != 0:
        return []
    try:
        return parse_masquerades(done.text)
    except (ValueError, KeyError, TypeError):
        return []


async def remove(bridge: str) -> None:
    await _nft(delete_argv(bridge), check=False)


def enable_forwarding(path: Path = IP_FORWARD) -> None:
    """Turn IPv4 forwarding on (in the network namespace ketchd runs in)."""
    if path.read_text().strip() != "1":
        path.write_text("1\n")
