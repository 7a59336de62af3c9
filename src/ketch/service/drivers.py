"""Which driver runs an instance: the registry of the daemon's drivers, one per host.

An instance's host is its spec's ``host`` (``LOCAL_HOST``, ``"local"``, for ketch's own
QEMU driver; else the name of a libvirt host of ``ketch host add``).  Services ask the
context for the driver of an instance (``ctx.driver_for(spec)``), which asks this
registry: the QEMU driver for ``local``; for a libvirt host, its
:class:`~ketch.runtime.libvirt_host.LibvirtHost` (made at the first call, kept, and its
connection opened lazily, through the URI and ssh wrapper the prober uses:
:func:`ketch.service.hosts.connect_uri`; for a ``qemu+ssh://`` host, with that wrapper
and destination as the :class:`~ketch.host.ssh.jump.Via` its guests' SSH ports are
reached through).

What the libvirt driver does not do yet is refused here, before anything is made, with
one line naming the host and its driver (:class:`~ketch.errors.HostUnsupported`):
:func:`refuse_launch` for ``launch``'s options, ``Context.require_local`` for the
verbs that need the QEMU driver (mounts, forwards, resizing).
"""

from __future__ import annotations

from collections.abc import Callable

from ketch import libvirt_uri
from ketch.errors import HostUnsupported, NotFound
from ketch.host import libvirt_ssh
from ketch.host.ssh.jump import Via
from ketch.layout import Root
from ketch.model import LOCAL_HOST, HostSpec, InstanceSpec
from ketch.runtime.driver import Driver
from ketch.runtime.libvirt_host import LibvirtHost
from ketch.store.db import Store

Opener = Callable[[HostSpec, str], Driver]  # (host, the URI to open) -> its driver


class Drivers:
    """The daemon's drivers: the local QEMU one, and one per libvirt host, made on first use."""

    def __init__(
        self, root: Root, store: Store, local: Driver, opener: Opener | None = None
    ) -> None:
        self.root, self.store, self.local = root, store, local
        self.opener: Opener = opener or self._libvirt
        self._hosts: dict[str, Driver] = {}

    def _libvirt(self, host: HostSpec, uri: str) -> Driver:
        """A libvirt host's driver; a remote one's guests reached through its SSH (the jump)."""
        parsed = libvirt_uri.parse(host.uri)
        via = None
        if parsed.remote:
            assert parsed.host is not None
            wrapper = self.root.host_dir(host.name) / libvirt_ssh.WRAPPER
            via = Via(wrapper, parsed.host, user=parsed.user, port=parsed.port)
        return LibvirtHost(host.name, uri, via=via)

    def remote(self, name: str) -> bool:
        """Is host ``name`` another machine (``qemu+ssh://``)?"""
        return name != LOCAL_HOST and libvirt_uri.parse(self.host(name).uri).remote

    def host(self, name: str) -> HostSpec:
        """The stored libvirt host ``name``; NotFound (exit 2) with a hint when there is none."""
        try:
            return self.store.get_host(name)
        except NotFound as exc:
            raise NotFound(
                f'host "{name}" does not exist',
                hint="see 'ketch host list'; 'ketch host add NAME URI' adds a libvirt host",
            ) from exc

    def for_host(self, name: str) -> Driver:
        if name == LOCAL_HOST:
            return self.local
        driver = self._hosts.get(name)
        if driver is None:
            from ketch.service.hosts import connect_uri

            host = self.host(name)
            driver = self._hosts[name] = self.opener(host, connect_uri(self.root, host))
        return driver

    def for_spec(self, spec: InstanceSpec) -> Driver:
        return self.for_host(spec.host)

    def forget(self, name: str) -> None:
        """A removed host: its driver goes (its connection closes when it is collected)."""
        self._hosts.pop(name, None)

    async def close(self) -> None:
        hosts, self._hosts = list(self._hosts.values()), {}
        for driver in hosts:
            if isinstance(driver, LibvirtHost):
                await driver.close()


def unsupported(host: str, what: str, instance: str | None = None) -> HostUnsupported:
    on = f'"{instance}" is on host "{host}"' if instance else f'host "{host}"'
    return HostUnsupported(
        f"{what} is not supported on libvirt hosts yet: {on} (driver libvirt)",
        hint="instances on the built-in host 'local' (ketch's QEMU driver) have it",
    )


def refuse_launch(
    host: HostSpec, *, mounts: bool, networks: bool, forwards: bool, firmware: str | None
) -> None:
    """The launch options the libvirt driver cannot honour yet, refused in one line each."""
    for given, what in (
        (mounts, "launch --mount"),
        (networks, "launch --network/--bridged"),
        (forwards, "launch --forward"),
        (firmware == "uefi", "launch --firmware uefi"),
    ):
        if given:
            raise unsupported(host.name, what)
