"""The managed network: a bridge, dnsmasq, NAT and one TAP per running instance.

As Multipass's ``mpqemubr0``: a bridge (``ketch0``) with a /24 of its own
that collides with none of the host's routes (``local.network.subnet``
overrides it), dnsmasq giving each instance a static lease for its MAC, NAT
to the host's default route (:mod:`ketch.host.nft`), and a TAP per instance
made when it starts and removed when it stops.  QEMU keeps the user-mode
``net0`` for ketch's SSH port; the TAP is a second NIC, ``net1``.

Everything is in the storage root's ``network/`` directory
(:class:`ketch.layout.NetworkDir`): the chosen subnet (so addresses stay
stable across daemon restarts and reboots), the allocation table (one
``MAC,IP,NAME`` line per instance), dnsmasq's pid, lease and log files.
An instance started on the network has ``nic.json`` in its directory (the
TAP, MAC and address its QEMU was started with): a suspended instance
resumes with the same NIC, since its saved device state has it.

What is missing is made again at every start (:meth:`ManagedNetwork.ensure`):
a bridge, an address, the NAT table, a dnsmasq that died or serves an older
set of leases, a stale TAP.  The last instance purged removes it all.

The instance's managed MAC is derived from its own MAC and instance id
(:func:`managed_mac`): a clone gets a new MAC, so a new address.  The pure
parts (names, MACs, subnets, leases, the guest's network config, ``nic.json``)
are :mod:`ketch.runtime.netplan`, re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ketch.errors import InvalidArgument, KetchError
from ketch.host import dnsmasq, ip, nft, procs
from ketch.host.dnsmasq import Host
from ketch.host.run import run
from ketch.layout import DIR_MODE, FILE_MODE, InstanceDir, Root
from ketch.model import InstanceSpec
from ketch.runtime.netplan import (
    BRIDGE,
    BRIDGE_KEY,
    CANDIDATES,
    DEFAULT_ENV,
    EXTRA_PREFIX,
    MANAGED,
    MODE_KEY,
    MODES,
    SUBNET_KEY,
    TAP_PREFIX,
    USER,
    Nic,
    allocate,
    choose_subnet,
    extra_tap_name,
    guest_network_config,
    managed_mac,
    parse_subnet,
    read_nic,
    tap_name,
    write_nic,
)

log = logging.getLogger(__name__)

# -- the network ------------------------------------------------------------------------------


class ManagedNetwork:
    """The storage root's managed network; ``setting`` reads a setting from the store."""

    def __init__(self, root: Root, setting: Callable[[str], str | None]) -> None:
        self.root = root
        self.dir = root.network
        self.setting = setting
        self._lock = asyncio.Lock()

    # -- what is asked for ------------------------------------------------------------------

    def mode(self) -> str:
        """``managed`` or ``user``: the setting, else ``$KETCH_NETWORK_DEFAULT``, else managed
        when ketchd runs as root."""
        value = self.setting(MODE_KEY) or os.environ.get(DEFAULT_ENV)
        if value in MODES:
            return value
        return MANAGED if os.geteuid() == 0 else USER

    def explicit(self) -> bool:
        return self.setting(MODE_KEY) == MANAGED

    def bridge(self) -> str:
        name = self.setting(BRIDGE_KEY) or BRIDGE
        if not ip.valid_ifname(name):
            raise InvalidArgument(f"invalid bridge name '{name}'")
        return name

    # -- files ------------------------------------------------------------------------------

    def hosts(self) -> list[Host]:
        try:
            return dnsmasq.parse_hosts(self.dir.hosts.read_text())
        except OSError:
            return []

    def _write(self, path: Path, text: str) -> None:
        self.dir.path.mkdir(mode=DIR_MODE, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)

    def stored_subnet(self) -> ipaddress.IPv4Network | None:
        try:
            data = json.loads(self.dir.state.read_text())
            return ipaddress.IPv4Network(data["subnet"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def subnet(self) -> ipaddress.IPv4Network:
        """The setting, else the stored subnet, else a free one (stored)."""
        wanted = self.setting(SUBNET_KEY)
        net = parse_subnet(wanted) if wanted else self.stored_subnet()
        if net is None:
            bridge = self.bridge()
            taken = await ip.routes()
            taken += [
                ipaddress.IPv4Network(a.interface.network)
                for a in await ip.addrs()
                if a.family == "inet" and a.ifname != bridge
            ]
            net = choose_subnet(taken)
        if net != self.stored_subnet():
            if self.stored_subnet() is not None:
                self._write(self.dir.hosts, "")  # renumbered: every instance gets a new lease
            self._write(self.dir.state, json.dumps({"bridge": self.bridge(), "subnet": str(net)}))
        return net

    # -- making it --------------------------------------------------------------------------

    async def ensure(self) -> ipaddress.IPv4Interface:
        """Bridge, address, NAT and dnsmasq, each made again when missing or stale."""
        if os.geteuid() != 0:
            raise KetchError(
                "the managed network needs ketchd to run as root",
                hint=f"'ketch set {MODE_KEY}=user' for user-mode networking",
            )
        subnet = await self.subnet()
        gateway = ipaddress.IPv4Interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")
        bridge = self.bridge()
        found = await ip.links(bridge)
        if found and found[0].kind != "bridge":
            raise KetchError(
                f"'{bridge}' exists and is not a bridge",
                hint=f"set another name: 'ketch set {BRIDGE_KEY}=ketch1'",
            )
        if not found:
            await ip.ip(ip.bridge_add_argv(bridge))
            # A dnsmasq bound to a bridge that was gone serves nothing: start it afresh.
            await self._stop_dnsmasq()
        if not any(a.interface == gateway for a in await ip.addrs(bridge)):
            await ip.ip(ip.addr_add_argv(bridge, str(gateway)))
        await ip.ip(ip.link_set_argv(bridge))
        await self._reattach(bridge)
        try:
            if await nft.masquerades(bridge) != [str(subnet)]:
                await nft.apply(bridge, subnet)
            nft.enable_forwarding()
        except (KetchError, OSError) as exc:
            log.warning("no NAT for the managed network (guests reach only the host): %s", exc)
        await self._dnsmasq(bridge, gateway)
        return gateway

    async def _reattach(self, bridge: str) -> None:
        """Put the instances' TAPs back on a bridge that was made again (they fell off)."""
        taps = {tap_name(self.root.path, h.name) for h in self.hosts()}
        for link in await ip.links():
            if link.name in taps and link.tap and link.master != bridge:
                await ip.ip(ip.link_set_argv(link.name, master=bridge), check=False)

    def _dnsmasq_config(self, bridge: str, gateway: ipaddress.IPv4Interface) -> list[str]:
        return dnsmasq.build_argv(
            dnsmasq.DnsmasqConfig(
                bridge=bridge,
                gateway=gateway,
                hosts=tuple(self.hosts()),
                pidfile=self.dir.dnsmasq_pid,
                leasefile=self.dir.leases,
                logfile=self.dir.dnsmasq_log,
            )
        )

    def dnsmasq_pid(self) -> tuple[int | None, list[str] | None]:
        """dnsmasq's pid and argv when this network's dnsmasq runs, else (None, None)."""
        pid = procs.read_pidfile(self.dir.dnsmasq_pid)
        argv = procs.cmdline(pid) if pid else None
        if pid and dnsmasq.argv_matches(argv, self.dir.leases):
            return pid, argv
        return None, None

    async def _dnsmasq(self, bridge: str, gateway: ipaddress.IPv4Interface) -> None:
        argv = self._dnsmasq_config(bridge, gateway)
        _, running = self.dnsmasq_pid()
        if running == argv:
            return
        await self._stop_dnsmasq()
        self.dir.path.mkdir(mode=DIR_MODE, exist_ok=True)
        await run(argv, timeout=30.0)  # forks into the background once it listens

    async def _stop_dnsmasq(self) -> None:
        pid, argv = self.dnsmasq_pid()
        if pid is not None:
            await asyncio.to_thread(procs.terminate, pid, expect=argv)
        procs.remove_quietly(self.dir.dnsmasq_pid)

    async def attach(self, spec: InstanceSpec, idir: InstanceDir, *, resume: bool) -> Nic | None:
        """The NIC to start QEMU with (its TAP made now), or None for user-mode only.

        A resumed instance gets the NIC it was suspended with, or none if it
        had none.  In the default (auto) mode a network that cannot be made
        falls back to user-mode networking; asked for explicitly, it fails.
        """
        recorded = read_nic(idir)
        if resume:
            if recorded is None:
                return None
        elif self.mode() != MANAGED:
            return None
        async with self._lock:
            try:
                return await self._attach(spec, idir, recorded if resume else None)
            except (KetchError, OSError) as exc:
                if resume or self.explicit():
                    raise KetchError(
                        f'cannot put "{spec.name}" on the managed network: {exc}',
                        hint=f"see 'ketch doctor'; 'ketch set {MODE_KEY}=user' for "
                        "user-mode networking",
                    ) from exc
                log.warning(
                    "managed network unavailable, %s gets user-mode only: %s", spec.name, exc
                )
                return None

    async def _attach(self, spec: InstanceSpec, idir: InstanceDir, recorded: Nic | None) -> Nic:
        mac = recorded.mac if recorded else managed_mac(spec)
        subnet = await self.subnet()
        table = allocate(self.hosts(), spec.name, mac, subnet)
        self._write(self.dir.hosts, dnsmasq.render_hosts(table))
        await self.ensure()
        address = next(h.ip for h in table if h.name == spec.name)
        tap = tap_name(self.root.path, spec.name)
        await ip.ip(ip.link_del_argv(tap), check=False)  # a stale one from a crash
        await ip.ip(ip.tap_add_argv(tap))
        await ip.ip(ip.link_set_argv(tap, master=self.bridge()))
        nic = Nic(tap=tap, mac=mac, ip=address)
        write_nic(idir, nic)
        return nic

    async def attach_extra(self, spec: InstanceSpec) -> list[tuple[str, str]]:
        """A TAP on each ``--network`` bridge, made now: (TAP, MAC) for QEMU."""
        out = []
        for i, n in enumerate(spec.networks):
            tap = extra_tap_name(self.root.path, spec.name, i)
            found = await ip.links(n.name)
            if not found or found[0].kind != "bridge":
                raise KetchError(
                    f'cannot start "{spec.name}": the bridge {n.name} of its --network is gone',
                    hint="make it again (see 'ketch networks')",
                )
            await ip.ip(ip.link_del_argv(tap), check=False)
            await ip.ip(ip.tap_add_argv(tap))
            await ip.ip(ip.link_set_argv(tap, master=n.name))
            out.append((tap, n.mac))
        return out

    async def detach(self, spec: InstanceSpec, idir: InstanceDir, *, forget: bool) -> None:
        """Remove the instance's TAPs; ``forget``: stopped, not suspended (drop nic.json)."""
        taps = [extra_tap_name(self.root.path, spec.name, i) for i in range(len(spec.networks))]
        nic = read_nic(idir)
        if nic is not None:
            taps.append(nic.tap)
        for tap in taps:
            with contextlib.suppress(KetchError):
                await ip.ip(ip.link_del_argv(tap), check=False)
        if forget:
            procs.remove_quietly(idir.nic)

    async def release(self, name: str) -> None:
        """The instance is purged: its lease goes; with the last one, the whole network."""
        async with self._lock:
            hosts = self.hosts()
            left = [h for h in hosts if h.name != name]
            if left == hosts and left:
                return
            if left:
                self._write(self.dir.hosts, dnsmasq.render_hosts(left))
                pid, _ = self.dnsmasq_pid()
                if pid is not None:  # restarted with the leases that are left
                    with contextlib.suppress(KetchError, OSError):
                        await self.ensure()
                return
            await self.remove()

    async def remove(self) -> None:
        """Take the whole network down: dnsmasq, NAT table, bridge, state files."""
        await self._stop_dnsmasq()
        if not self.dir.path.exists():
            return
        bridge = self.bridge()
        with contextlib.suppress(KetchError):
            await nft.remove(bridge)
            if await ip.links(bridge):
                await ip.ip(ip.link_del_argv(bridge), check=False)
        shutil.rmtree(self.dir.path, ignore_errors=True)

    # -- looking ----------------------------------------------------------------------------

    def addresses(self, idir: InstanceDir) -> list[str]:
        """The instance's managed address (from dnsmasq's lease, else its static lease)."""
        nic = read_nic(idir)
        if nic is None:
            return []
        try:
            leases = dnsmasq.parse_leases(self.dir.leases.read_text())
        except OSError:
            leases = []
        leased = [le.ip for le in leases if le.mac == nic.mac]
        return leased[:1] or [nic.ip]


__all__ = [
    "BRIDGE",
    "BRIDGE_KEY",
    "CANDIDATES",
    "DEFAULT_ENV",
    "EXTRA_PREFIX",
    "MANAGED",
    "MODES",
    "MODE_KEY",
    "SUBNET_KEY",
    "TAP_PREFIX",
    "USER",
    "ManagedNetwork",
    "Nic",
    "allocate",
    "choose_subnet",
    "extra_tap_name",
    "guest_network_config",
    "managed_mac",
    "parse_subnet",
    "read_nic",
    "tap_name",
    "write_nic",
]
