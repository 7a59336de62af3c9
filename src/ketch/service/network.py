"""Use cases of the managed network: its settings, and what doctor checks and repairs.

The network itself (bridge, dnsmasq, NAT, TAPs) is :mod:`ketch.runtime.network`;
this module says what is wrong with it and puts it right
(``service/doctor/network.py`` turns that into findings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ketch.errors import InvalidArgument, KetchError
from ketch.host import dnsmasq, ip, procs
from ketch.layout import InstanceDir
from ketch.model import FindingCode, Inconsistency, InconsistencyCode, NetworkMode, NetworkSpec
from ketch.runtime import network as net
from ketch.runtime.network import ManagedNetwork
from ketch.service.context import Context

BRIDGED_KEY = "local.bridged-network"
SYS_NET = Path("/sys/class/net")


def check_setting(key: str, value: str) -> None:
    """Refuse a bad ``local.network*`` value (pure)."""
    if key == net.MODE_KEY and value not in net.MODES:
        raise InvalidArgument(f"invalid network mode '{value}'", hint="give 'managed' or 'user'")
    if key == net.SUBNET_KEY:
        net.parse_subnet(value)
    if key in (net.BRIDGE_KEY, BRIDGED_KEY) and not ip.valid_ifname(value):
        raise InvalidArgument(
            f"invalid bridge name '{value}'",
            hint="up to 15 letters, digits, '-', '_' or '.', not starting with '-'",
        )


async def show_default(network: ManagedNetwork, key: str) -> str:
    """What an unset ``local.network*`` key means now."""
    if key == net.MODE_KEY:
        return network.mode()
    if key == net.BRIDGE_KEY:
        return network.bridge()
    stored = network.stored_subnet()
    return str(stored) if stored else "(chosen when the network is first made)"


def bridgeable(
    links: list[ip.Link], wireless: set[str], managed_bridge: str
) -> list[tuple[str, str, str]]:
    """``(name, type, description)`` of each interface an instance can be bridged to (pure).

    As Multipass on Linux: bridges (but ketch's own managed bridge), physical
    ethernet and Wi-Fi devices; no loopback, TAPs, veths or other virtual ones.
    """
    rows = []
    for link in sorted(links, key=lambda x: x.name):
        if link.kind == "bridge" and link.name != managed_bridge:
            members = sorted(x.name for x in links if x.master == link.name)
            desc = "Network bridge" + (f" with {', '.join(members)}" if members else "")
            rows.append((link.name, "bridge", desc))
        elif link.name in wireless:
            rows.append((link.name, "wifi", "Wi-Fi device"))
        elif link.bus and link.kind == "" and link.mac:
            rows.append((link.name, "ethernet", "Ethernet device"))
    return rows


async def host_networks(network: ManagedNetwork | None) -> list[tuple[str, str, str]]:
    """What ``ketch networks`` lists, looked up now."""
    links = await ip.links()
    wifi = {link.name for link in links if ip.wireless(link.name)}
    managed = network.bridge() if network is not None else net.BRIDGE
    return bridgeable(links, wifi, managed)


def parse_network(text: str) -> dict[str, str]:
    """``--network name=IF[,mode=auto|manual][,mac=MAC]`` or a bare ``IF``, as Multipass (pure)."""
    if "=" not in text:
        if not text or "," in text:
            raise InvalidArgument(f"invalid --network '{text}'", hint="use name=BRIDGE,...")
        return {"name": text}
    found: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in ("name", "mode", "mac") or not value or key in found:
            raise InvalidArgument(
                f"invalid --network '{text}'",
                hint="use name=BRIDGE[,mode=auto|manual][,mac=MAC], each key once",
            )
        found[key] = value
    if "name" not in found:
        raise InvalidArgument(f"invalid --network '{text}': no name=", hint="name=BRIDGE,...")
    if found.get("mode", "auto") not in ("auto", "manual"):
        raise InvalidArgument(f"invalid --network mode '{found['mode']}'", hint="auto or manual")
    return found


async def extra_networks(
    ctx: Context,
    asked: list[str],
    *,
    bridged: bool,
    mac: Callable[[], str],
) -> tuple[NetworkSpec, ...]:
    """The ``--network`` NICs of a launch, checked: each names a bridge of the host.

    ``--bridged`` adds one on ``local.bridged-network``; a NIC without a MAC gets
    a new one from ``mac``.
    """
    wanted: list[tuple[str, str, str | None]] = []
    for text in asked:
        n = parse_network(text)
        wanted.append((n["name"], n.get("mode", "auto"), n.get("mac")))
    if bridged:
        name = ctx.store.get_setting(BRIDGED_KEY)
        if not name:
            raise InvalidArgument(
                "--bridged needs a bridge to use",
                hint=f"'ketch set {BRIDGED_KEY}=BRIDGE' (see 'ketch networks')",
            )
        wanted.append((name, "auto", None))
    if not wanted:
        return ()
    links = {link.name: link for link in await ip.links()}
    managed = ctx.network.bridge() if ctx.network is not None else net.BRIDGE
    out: list[NetworkSpec] = []
    for name, mode, given in wanted:
        link = links.get(name)
        if link is None or name == managed:
            raise InvalidArgument(
                f"no network interface '{name}' to bridge to", hint="see 'ketch networks'"
            )
        if link.kind != "bridge":
            raise InvalidArgument(
                f"'{name}' is not a bridge: ketch attaches instances to bridges only",
                hint=f"make a bridge with {name} in it (NetworkManager, systemd-networkd or "
                "ip link), then use the bridge; see 'ketch networks'",
            )
        if mode not in ("auto", "manual"):
            raise InvalidArgument(f"invalid network mode '{mode}'", hint="use auto or manual")
        if given is not None and not dnsmasq.valid_mac(given):
            raise InvalidArgument(
                f"invalid MAC address '{given}'", hint="six hex pairs, e.g. 52:54:00:12:34:56"
            )
        address = (given or mac()).lower()
        if any(n.mac == address for n in out):
            raise InvalidArgument(f"MAC address {address} is given twice")
        out.append(NetworkSpec(name=name, mac=address, mode=NetworkMode(mode)))
    return tuple(out)


def tap_problem(
    idir: InstanceDir, pid: int | None, sys_net: Path = SYS_NET
) -> Inconsistency | None:
    """``network-tap-missing`` when QEMU ``pid`` was started on a TAP that is gone (cheap:
    a file and /proc, so every ``list`` can afford it); None otherwise."""
    nic = net.read_nic(idir)
    if nic is None or pid is None or (sys_net / nic.tap).exists():
        return None
    if f"ifname={nic.tap}" not in ",".join(procs.cmdline(pid) or []).split(","):
        return None  # not this QEMU's TAP (another network mode, a stale nic.json)
    return Inconsistency(
        InconsistencyCode.NETWORK_TAP_MISSING,
        f"its TAP {nic.tap} is gone: its managed address {nic.ip} does not reach it "
        "(ketch's SSH port still does)",
        "'ketch doctor --fix' suspends and resumes it, which gives its QEMU the TAP again "
        f"(the guest's processes are kept); or 'ketch restart {idir.path.name}'",
    )


@dataclass(frozen=True)
class Problem:
    """Something wrong with the managed network that doctor can repair."""

    code: FindingCode
    message: str
    tap: str = ""  # network-stale-tap: which


async def problems(network: ManagedNetwork, running_taps: set[str]) -> list[Problem]:
    """What is wrong with a network that exists (has state); ``running_taps``: in use."""
    if not network.dir.path.exists() or not network.hosts():
        return []
    found: list[Problem] = []
    bridge = network.bridge()
    links = await ip.links()
    if not any(link.name == bridge and link.kind == "bridge" for link in links):
        found.append(Problem(FindingCode.NETWORK_BRIDGE_MISSING, f"the bridge {bridge} is missing"))
    pid, _ = network.dnsmasq_pid()
    if pid is None:
        found.append(
            Problem(FindingCode.NETWORK_DNSMASQ_DEAD, "dnsmasq (DHCP and DNS) does not run")
        )
    for link in links:
        if (
            link.name.startswith(net.TAP_PREFIX)
            and link.tap
            and link.name not in running_taps
            and link.master in (None, bridge)
        ):
            found.append(
                Problem(
                    FindingCode.NETWORK_STALE_TAP,
                    f"the TAP {link.name} belongs to no running instance",
                    link.name,
                )
            )
    return found


async def repair(network: ManagedNetwork, problem: Problem) -> str:
    """Put one problem right; returns what was done."""
    if problem.code is FindingCode.NETWORK_STALE_TAP:
        await ip.ip(ip.link_del_argv(problem.tap), check=False)
        return f"removed the TAP {problem.tap}"
    try:
        await network.ensure()
    except KetchError as exc:
        raise KetchError(f"could not repair the managed network: {exc.message}") from exc
    return "made the managed network again (bridge, NAT, dnsmasq)"
