"""The managed network's plan (pure, but nic.json): names, MACs, subnets, addresses.

What :mod:`ketch.runtime.network` decides with: the bridge's and the TAPs'
names, an instance's managed MAC (derived from its own MAC and instance id),
the subnet (one no route overlaps), the static lease of each instance, the
guest's cloud-init network config, and ``nic.json``, the NIC an instance's
QEMU was started with.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ketch.errors import InvalidArgument, KetchError
from ketch.host.dnsmasq import Host
from ketch.layout import FILE_MODE, InstanceDir
from ketch.model import InstanceSpec, NetworkMode

BRIDGE = "ketch0"
TAP_PREFIX = "kt-"
EXTRA_PREFIX = "kx"
MANAGED = "managed"
USER = "user"
MODES = (MANAGED, USER)
MODE_KEY = "local.network"
SUBNET_KEY = "local.network.subnet"
BRIDGE_KEY = "local.network.bridge"
DEFAULT_ENV = "KETCH_NETWORK_DEFAULT"  # the default mode when local.network is unset
# Where a subnet is looked for when none is set: 10.97.0.0/24 ... 10.97.255.0/24.
CANDIDATES = tuple(ipaddress.IPv4Network(f"10.97.{i}.0/24") for i in range(256))


@dataclass(frozen=True)
class Nic:
    """An instance's NIC on the managed network."""

    tap: str
    mac: str
    ip: str


# -- names and addresses ---------------------------------------------------------------------


def managed_mac(spec: InstanceSpec) -> str:
    """The MAC of the instance's managed NIC: derived from its own MAC and instance id."""
    digest = hashlib.sha256(f"{spec.instance_id}/{spec.mac}".encode()).digest()
    return "52:54:01:" + ":".join(f"{b:02x}" for b in digest[:3])


def _ifname(mac: str) -> str:
    """The guest's MAC-based interface name (``enx`` and the MAC's hex, as udev names it).

    cloud-init names (and may rename) each NIC after its key in the config.
    """
    return "enx" + mac.replace(":", "").lower()


def guest_network_config(spec: InstanceSpec) -> str:
    """The seed's ``network-config`` (cloud-init v2, as JSON, which is YAML).

    DHCP on the user-mode NIC (default route, metric 100), on the managed NIC
    (optional: absent in user mode; metric 200) and on each ``mode=auto``
    ``--network`` NIC, all matched by MAC (cloud-init looks the guest's own
    name up by MAC, so nothing is renamed); ``mode=manual`` NICs are not in it,
    so they are left unconfigured, as Multipass leaves them.  Every instance
    gets one: without it cloud-init's fallback configures the first NIC only,
    and a debian-12 guest's managed NIC stayed down.  The tiny image reads it
    too (``images/guest/network``: DHCP on the NICs it lists, by MAC).
    """
    ethernets: dict[str, object] = {
        _ifname(spec.mac): {
            "match": {"macaddress": spec.mac},
            "dhcp4": True,
            "dhcp4-overrides": {"route-metric": 100},
        },
        _ifname(managed_mac(spec)): {
            "match": {"macaddress": managed_mac(spec)},
            "dhcp4": True,
            "optional": True,
            "dhcp4-overrides": {"route-metric": 200},
        },
    }
    for i, n in enumerate(spec.networks):
        if n.mode is NetworkMode.AUTO:  # manual ones are left alone
            ethernets[_ifname(n.mac)] = {
                "match": {"macaddress": n.mac},
                "dhcp4": True,
                "optional": True,
                "dhcp4-overrides": {"route-metric": 300 + i},
            }
    return json.dumps({"version": 2, "ethernets": ethernets}, indent=2) + "\n"


def seed_instance_id(spec: InstanceSpec) -> str:
    """The seed's ``instance-id``: the instance's, with ``_e`` for each NIC added later.

    As Multipass does when ``local.NAME.bridged=true`` adds a NIC: cloud-init
    applies a network config only to a new instance, so the seed's id changes
    (per-instance modules run again at that boot; the managed MAC, derived from
    the instance's own id, does not change).
    """
    return spec.instance_id + "_e" * spec.nics_added


def tap_name(root: Path, name: str) -> str:
    """The instance's TAP: ``kt-`` and 10 hex digits of the storage root and the name."""
    return TAP_PREFIX + hashlib.sha256(f"{root}\0{name}".encode()).hexdigest()[:10]


def extra_tap_name(root: Path, name: str, index: int) -> str:
    """The TAP of the instance's ``index``-th ``--network`` NIC: ``kx<10 hex>-<index>``."""
    digest = hashlib.sha256(f"{root}\0{name}".encode()).hexdigest()[:10]
    return f"{EXTRA_PREFIX}{digest}-{index}"


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """A ``local.network.subnet`` value: a private IPv4 network from /16 to /29."""
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise InvalidArgument(
            f"invalid subnet '{text}': {exc}", hint="give a private network, e.g. 10.97.5.0/24"
        ) from exc
    if not net.is_private or net.is_loopback or net.is_link_local or not 16 <= net.prefixlen <= 29:
        raise InvalidArgument(
            f"invalid subnet '{text}'",
            hint="give a private IPv4 network from /16 to /29, e.g. 10.97.5.0/24",
        )
    return net


def choose_subnet(taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first candidate subnet no route or address overlaps (the default route aside)."""
    busy = [n for n in taken if n.prefixlen > 0]
    for net in CANDIDATES:
        if not any(net.overlaps(b) for b in busy):
            return net
    raise KetchError(
        "no free subnet for the managed network in 10.97.0.0/16",
        hint=f"set one: 'ketch set {SUBNET_KEY}=192.168.77.0/24'",
    )


def allocate(hosts: list[Host], name: str, mac: str, subnet: ipaddress.IPv4Network) -> list[Host]:
    """The table with ``name`` on ``mac``: its address kept, or the lowest free one."""
    for h in hosts:
        if h.name == name and h.mac == mac and ipaddress.IPv4Address(h.ip) in subnet:
            return hosts
    kept = [h for h in hosts if h.name != name and ipaddress.IPv4Address(h.ip) in subnet]
    used = {ipaddress.IPv4Address(h.ip) for h in kept}
    gateway = subnet.network_address + 1
    for addr in subnet.hosts():
        if addr != gateway and addr not in used:
            return [*kept, Host(mac, str(addr), name)]
    raise KetchError(f"the managed network {subnet} has no free address left")


def read_nic(idir: InstanceDir) -> Nic | None:
    try:
        data = json.loads(idir.nic.read_text())
        return Nic(tap=str(data["tap"]), mac=str(data["mac"]), ip=str(data["ip"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_nic(idir: InstanceDir, nic: Nic) -> None:
    tmp = idir.path / f".{idir.nic.name}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as f:
        json.dump({"tap": nic.tap, "mac": nic.mac, "ip": nic.ip}, f)
    os.replace(tmp, idir.nic)
