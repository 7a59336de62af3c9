"""What every use case is given: the storage root, store, drivers, images, reporter, prober."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ketch.clock import SYSTEM, Clock
from ketch.errors import NotFound
from ketch.host.libvirt import Prober
from ketch.layout import Root
from ketch.model import LOCAL_HOST, ImageInfo, InstanceSpec
from ketch.progress import Reporter
from ketch.runtime.driver import Driver
from ketch.runtime.network import ManagedNetwork
from ketch.store.db import Store

if TYPE_CHECKING:
    from ketch.service.drivers import Drivers
    from ketch.service.forward_watch import Forwarder


class ImageProvider(Protocol):
    """Resolves an image reference to a cached, verified base image."""

    async def resolve(self, ref: str, reporter: Reporter) -> ImageInfo:
        """Fetch (or build) and verify the image ``ref`` names."""
        ...

    def probe_kernel(self) -> Path | None:
        """A kernel already on disk that the KVM probe can boot, if any."""
        ...


@dataclass
class Context:
    """The daemon-wide collaborators of the use cases."""

    root: Root
    store: Store
    driver: Driver  # the local host's (QEMU); an instance's own: driver_for(spec)
    images: ImageProvider
    # instance name -> the operation running on it now (kept by the daemon)
    active: dict[str, str] = field(default_factory=dict)
    clock: Clock = SYSTEM
    boot_timeout: float = 300.0
    stop_timeout: float = 60.0
    forwarder: Forwarder | None = None  # the daemon's port forwarder (service/forward_watch.py)
    network: ManagedNetwork | None = None  # the managed network (None: user-mode only)
    prober: Prober = field(default_factory=Prober)  # libvirt hosts' probes (service/hosts.py)
    drivers: Drivers | None = None  # every host's driver (service/drivers.py; None: local only)

    def driver_for(self, spec: InstanceSpec) -> Driver:
        """The driver of the instance's host (the local QEMU one for ``local``)."""
        if spec.host == LOCAL_HOST:
            return self.driver
        if self.drivers is None:
            raise NotFound(f'host "{spec.host}" of instance "{spec.name}" has no driver here')
        return self.drivers.for_spec(spec)

    def require_local(self, spec: InstanceSpec, what: str) -> None:
        """Refuse ``what`` for an instance on a libvirt host (service/drivers.py)."""
        if spec.host != LOCAL_HOST:
            from ketch.service.drivers import unsupported

            raise unsupported(spec.host, what, spec.name)
