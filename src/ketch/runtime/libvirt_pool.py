"""ketch's storage pool on a libvirt host and its volumes, for the libvirt driver.

:class:`LibvirtPool` holds the one connection to the host's URI and knows the pool:
a ``dir`` pool named ``ketch`` (:data:`POOL`), defined, built, started and set to
autostart when it is missing.  Files go in through libvirt's storage-volume upload
(``virStorageVolUpload`` and a stream), never copied beside libvirt: a volume is made
(raw, the file's size), the file is streamed into it while its sha256 is taken, and the
volume is then **downloaded back** (``virStorageVolDownload``) and hashed again; it
counts only when both digests are the file's (:class:`~ketch.errors.DigestMismatch`
otherwise, and the volume is deleted).  libvirt re-reads a volume once its upload ends (a
qcow2 base then reads back as qcow2 with its virtual size, libvirt 9.0), but ketch does
not lean on that probe: the overlay names the base's format itself
(``<backingStore><format>``), its size comes from the caller (the local image's virtual
size), and a volume's size is its file's (``VIR_STORAGE_VOL_GET_PHYSICAL``).

The base image's volume is named by its digest (``base-<sha256[:16]>.<fmt>``) so the
instances of one image share it; one already in the pool is verified the same way before
it is used again, and :meth:`~LibvirtPool.prune_bases` deletes those no volume is backed
by any more.  :meth:`~LibvirtPool.copy_volume` copies a volume on the host (a clone's
disk).  Every call runs through :func:`ketch.host.libvirt.bounded`: a deadline each
(:data:`CALL_TIMEOUT`, and for a transfer its size at :data:`UPLOAD_RATE` more), libvirt's
errors translated there once.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ketch.errors import DigestMismatch
from ketch.host.libvirt import binding, bounded
from ketch.model import InstanceSpec
from ketch.runtime.libvirt_xml import pool_xml, volume_xml

POOL = "ketch"
POOL_PATH = "/var/lib/libvirt/ketch"
CALL_TIMEOUT = 30.0  # seconds for one libvirt call (define, start, a lookup ...)
UPLOAD_RATE = 20 * 2**20  # bytes a second a volume's upload (and download) is given at least
CHUNK = 2**20
BASE_PREFIX = "base-"
STORAGE_VOL_GET_PHYSICAL = 1  # virStorageVolInfoFlags: info()[2] is the file's size
POOL_AUTOSTART = 1


@dataclass(frozen=True)
class Volume:
    """A volume in ketch's pool: its name, its path on the host, what it holds."""

    name: str
    path: str
    size: int  # bytes (the file's, as uploaded)
    sha256: str | None = None  # as verified after its upload (None: made by libvirt)


def base_name(sha256: str, fmt: str) -> str:
    return f"{BASE_PREFIX}{sha256[:16]}.{fmt}"


def disk_name(instance: str) -> str:
    return f"{instance}.qcow2"


def seed_name(instance: str) -> str:
    return f"{instance}-seed.iso"


def kernel_name(instance: str) -> str:
    return f"{instance}.kernel"


def initrd_name(instance: str) -> str:
    return f"{instance}.initrd"


def instance_volumes(instance: str) -> tuple[str, ...]:
    """Every volume of ``instance`` (its base aside, shared by the image's instances)."""
    return (disk_name(instance), seed_name(instance), kernel_name(instance), initrd_name(instance))


def backing_path(vol_xml: str) -> str | None:
    """The backing file a volume's XML names (None: it has none).  Pure."""
    path = ET.fromstring(vol_xml).find("backingStore/path")
    return None if path is None or not path.text else path.text


def transfer_timeout(size: int) -> float:
    return CALL_TIMEOUT + size / UPLOAD_RATE


def found(lookup: Callable[[], Any], missing: int) -> Any | None:
    """What ``lookup`` finds, or None when libvirt says the error ``missing`` (no such
    volume, snapshot ...).  Blocking."""
    libvirt = binding()
    try:
        return lookup()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == missing:
            return None
        raise


def deleted(found: Any | None) -> bool:
    """Delete what a lookup found (a volume, a snapshot: ``delete(0)``); False when it found
    nothing.  Blocking."""
    if found is None:
        return False
    found.delete(0)
    return True


def _quietly(call: Callable[[], object]) -> None:
    """Run a clean-up call whose own libvirt error would hide the one being raised."""
    try:
        call()
    except Exception as exc:
        if not isinstance(exc, binding().libvirtError):
            raise


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class LibvirtPool:
    """ketch's pool on one libvirt host and its volumes.  Holds one connection."""

    def __init__(
        self,
        uri: str,
        *,
        pool: str = POOL,
        pool_path: str = POOL_PATH,
        timeout: float = CALL_TIMEOUT,
        kvm: bool = False,
    ) -> None:
        self.uri, self.pool_name, self.pool_path = uri, pool, pool_path
        self.timeout, self.kvm = timeout, kvm
        self._conn: Any = None

    # -- the connection ------------------------------------------------------------------

    async def _call(self, what: str, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        return await bounded(fn, timeout=self.timeout if timeout is None else timeout, what=what)

    async def connect(self) -> None:
        if self._conn is None:
            self._conn = await self._call("open", lambda: binding().open(self.uri))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._call("close", conn.close)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def conn(self) -> Any:
        if self._conn is None:
            raise RuntimeError("LibvirtDriver.connect() first")
        return self._conn

    # -- the pool and its volumes --------------------------------------------------------

    def _pool(self) -> Any:
        return self.conn.storagePoolLookupByName(self.pool_name)

    async def ensure_pool(self) -> None:
        """ketch's dir pool, made (defined, built, started, autostarted) when missing."""

        def ensure() -> None:
            libvirt = binding()
            try:
                pool = self._pool()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                pool = self.conn.storagePoolDefineXML(pool_xml(self.pool_name, self.pool_path))
                pool.build(0)
                pool.setAutostart(POOL_AUTOSTART)
            if not pool.isActive():
                pool.create(0)
            pool.refresh(0)

        await self._call("pool", ensure)

    def _lookup_volume(self, name: str) -> Any | None:
        """The pool's volume ``name``, or None.  Blocking."""
        no_volume = binding().VIR_ERR_NO_STORAGE_VOL
        return found(lambda: self._pool().storageVolLookupByName(name), no_volume)

    async def volumes(self) -> list[str]:
        """The names of the volumes in ketch's pool."""
        return sorted(await self._call("volumes", lambda: self._pool().listVolumes()))

    async def volume(self, name: str) -> Volume | None:
        def look() -> Volume | None:
            vol = self._lookup_volume(name)
            if vol is None:
                return None
            physical = int(vol.infoFlags(STORAGE_VOL_GET_PHYSICAL)[2])  # the file's size
            return Volume(name, str(vol.path()), physical)

        result: Volume | None = await self._call("volume", look)
        return result

    async def delete_volume(self, name: str) -> bool:
        """Delete a volume of the pool; False when there was none."""

        done: bool = await self._call("delete-volume", lambda: deleted(self._lookup_volume(name)))
        return done

    def _upload(self, name: str, path: Path, size: int) -> tuple[str, str]:
        """Make volume ``name`` (raw, ``size`` bytes) and upload ``path`` into it; the
        sha256 of what was sent and of what reads back.  Blocking."""
        pool = self._pool()
        vol = pool.createXML(volume_xml(name, size, "raw"), 0)
        sent = hashlib.sha256()
        stream = self.conn.newStream(0)
        try:
            vol.upload(stream, 0, size, 0)
            with path.open("rb") as f:

                def chunk(_stream: Any, nbytes: int, _opaque: Any) -> bytes:
                    data = f.read(min(nbytes, CHUNK))
                    sent.update(data)
                    return data

                stream.sendAll(chunk, None)
            stream.finish()
        except BaseException:
            _quietly(stream.abort)  # the stream may be dead already: the first error counts
            _quietly(lambda: vol.delete(0))
            raise
        return sent.hexdigest(), self._download_sha256(vol, size)

    def _download_sha256(self, vol: Any, size: int) -> str:
        got = hashlib.sha256()
        stream = self.conn.newStream(0)
        try:
            vol.download(stream, 0, size, 0)
            stream.recvAll(lambda _s, data, h: h.update(data), got)
            stream.finish()
        except BaseException:
            _quietly(stream.abort)
            raise
        return got.hexdigest()

    async def upload(self, name: str, path: Path, *, sha256: str | None = None) -> Volume:
        """Upload the file ``path`` as volume ``name``, verified (module docstring)."""
        size = path.stat().st_size
        want = sha256 or file_sha256(path)
        sent, back = await self._call(
            "upload", lambda: self._upload(name, path, size), transfer_timeout(size) * 2
        )
        if sent != want or back != want:
            await self.delete_volume(name)
            raise DigestMismatch(f"volume {name} ({path})", want, back if sent == want else sent)
        vol = await self.volume(name)
        assert vol is not None
        return Volume(name, vol.path, size, want)

    async def upload_base(self, path: Path, fmt: str) -> Volume:
        """The base image's volume: reused when one with its digest verifies, else uploaded."""
        want = file_sha256(path)
        name = base_name(want, fmt)
        have = await self.volume(name)
        if have is not None:
            back = await self._call(
                "download",
                lambda: self._download_sha256(self._pool().storageVolLookupByName(name), have.size),
                transfer_timeout(have.size),
            )
            if back == want and have.size == path.stat().st_size:
                return Volume(name, have.path, have.size, want)
            if have.path in await self._call("volumes", self._backing_paths):
                # disks are backed by it: never deleted from under them
                raise DigestMismatch(f"base volume {name}, in use", want, back)
            await self.delete_volume(name)
        return await self.upload(name, path, sha256=want)

    async def upload_seed(self, spec: InstanceSpec, iso: Path) -> Volume:
        """The instance's NoCloud seed as a volume (replaced if there is one)."""
        await self.delete_volume(seed_name(spec.name))
        return await self.upload(seed_name(spec.name), iso)

    async def boot_files(self, spec: InstanceSpec) -> tuple[Volume | None, Volume | None]:
        """A direct kernel boot's kernel and initrd as the instance's volumes (uploaded,
        verified, when missing); (None, None) for an image that boots from its disk."""
        have: list[Volume | None] = []
        for path, name in ((spec.boot.kernel, kernel_name), (spec.boot.initrd, initrd_name)):
            vol = None
            if path:
                vol = await self.volume(name(spec.name))
                if vol is None:
                    vol = await self.upload(name(spec.name), Path(path))
            have.append(vol)
        return have[0], have[1]

    async def create_disk(
        self, spec: InstanceSpec, base: Volume, base_format: str, *, base_size: int
    ) -> Volume:
        """The instance's qcow2 volume on ``base``: ``spec.disk`` bytes, or the base's own
        virtual size ``base_size`` (the local image's, as ``qemu-img info`` says) when that
        is larger."""
        return await self.create_overlay(spec.name, base, base_format, max(spec.disk, base_size))

    async def create_overlay(
        self, instance: str, base: Volume, base_format: str, size: int
    ) -> Volume:
        """The disk volume of ``instance``: a qcow2 of ``size`` bytes backed by ``base``."""
        name = disk_name(instance)
        xml = volume_xml(name, size, "qcow2", backing=base.path, backing_format=base_format)

        def make() -> Volume:
            vol = self._pool().createXML(xml, 0)
            return Volume(name, str(vol.path()), size)

        made: Volume = await self._call("create-disk", make)
        return made

    async def copy_volume(self, src: str, dst: str) -> Volume:
        """Volume ``dst``, a copy of volume ``src`` made by libvirt on the host
        (``virStorageVolCreateXMLFrom``; the dir pool runs ``qemu-img convert``): a full
        qcow2 of the source's current data, without a backing file (libvirt drops the
        backing store when it converts) and without the source's internal snapshots."""

        def capacity() -> int:
            return int(self._pool().storageVolLookupByName(src).info()[1])  # virtual size

        size: int = await self._call("volume", capacity)

        def copy() -> Volume:
            pool = self._pool()
            source = pool.storageVolLookupByName(src)
            vol = pool.createXMLFrom(volume_xml(dst, size, "qcow2"), source, 0)
            return Volume(dst, str(vol.path()), int(vol.infoFlags(STORAGE_VOL_GET_PHYSICAL)[2]))

        # bounded by the virtual size: the copy holds the base's data too
        made: Volume = await self._call("copy-volume", copy, transfer_timeout(size))
        return made

    def _backing_paths(self) -> set[str | None]:
        """The backing files of the pool's volumes (after a refresh).  Blocking."""
        pool = self._pool()
        pool.refresh(0)
        return {backing_path(v.XMLDesc(0)) for v in pool.listAllVolumes(0)}

    async def prune_bases(self) -> list[str]:
        """Delete the base volumes no other volume in the pool is backed by; their names."""

        def unused() -> list[str]:
            used = self._backing_paths()
            vols = self._pool().listAllVolumes(0)
            return [
                v.name() for v in vols if v.name().startswith(BASE_PREFIX) and v.path() not in used
            ]

        names: list[str] = await self._call("volumes", unused)
        for name in names:
            await self.delete_volume(name)
        return names
