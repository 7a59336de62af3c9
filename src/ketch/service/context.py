"""What every use case is given: the storage root, store, driver, images, reporter, prober."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ketch.clock import SYSTEM, Clock
from ketch.host.libvirt import Prober
from ketch.layout import Root
from ketch.model import ImageInfo
from ketch.progress import Reporter
from ketch.runtime.driver import Driver
from ketch.runtime.network import ManagedNetwork
from ketch.store.db import Store

if TYPE_CHECKING:
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
    driver: Driver
    images: ImageProvider
    # instance name -> the operation running on it now (kept by the daemon)
    active: dict[str, str] = field(default_factory=dict)
    clock: Clock = SYSTEM
    boot_timeout: float = 300.0
    stop_timeout: float = 60.0
    forwarder: Forwarder | None = None  # the daemon's port forwarder (service/forward_watch.py)
    network: ManagedNetwork | None = None  # the managed network (None: user-mode only)
    prober: Prober = field(default_factory=Prober)  # libvirt hosts' probes (service/hosts.py)
