"""Turn what the user typed after ``ketch launch`` into a cached, verified image.

Accepted references:

* ``tiny`` / ``ketch:tiny``: the built-in image, built by the injected
  ``build_tiny`` (ketch's own ``images/tiny.py``).
* ``debian-12`` / ``ketch:debian-12``: the built-in Debian 12 cloud image,
  built by the injected ``build_debian`` (``images/debian.py``); Debian's own
  names ``debian``, ``bookworm`` and ``12`` name it too (as Multipass resolves
  ``debian``), unless a remote called ``debian`` is configured: then they are
  that remote's.
* ``ALIAS`` / ``REMOTE:ALIAS`` (``noble``, ``release:24.04``, ``daily:lts``):
  a product of a simplestreams remote.  Unqualified aliases look at the
  built-in ``ketch`` remote first, then at ``release``.  Each resolution is
  remembered in the vault; when the remote is unreachable the newest cached
  copy of that alias is used, with a warning.  An image whose catalogue
  entry is unsafe (an item on another origin or without a sha256, see
  :mod:`ketch.images.simplestreams`) is refused before any download; a
  remote read over plain http, or whose catalogue is not signature-checked,
  gets a warning.
* ``file:///abs/path.qcow2``: a local image, copied into the vault.
* ``http(s)://host/path.img``: an image without a published digest: ketch
  says so, caches it by the digest of what it received, and re-checks the
  URL with a conditional request next time.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ketch.errors import DigestMismatch, ImageError, InvalidArgument, NotFound
from ketch.images.catalog import (
    BUILTIN_REMOTE,
    DEBIAN,
    DEBIAN_ALIASES,
    DEBIAN_REMOTE,
    DEFAULT_REMOTE,
    TINY,
    load_catalog,
    unsigned_reason,
)
from ketch.images.simplestreams import Catalog, CatalogImage, CatalogItem
from ketch.images.vault import Vault
from ketch.model import BootSpec, ImageInfo
from ketch.progress import Reporter

BuildTiny = Callable[[Reporter], Awaitable[ImageInfo]]

_QCOW2_MAGIC = b"QFI\xfb"
_COMPRESSED = {b"\xfd7zXZ": "xz", b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\x28\xb5\x2f\xfd": "zstd"}


async def resolve(
    ref: str,
    *,
    remotes: Mapping[str, str],
    vault: Vault,
    build_tiny: BuildTiny,
    reporter: Reporter,
    build_debian: BuildTiny | None = None,
) -> ImageInfo:
    """The image ``ref`` names, downloaded and verified into ``vault`` if needed."""
    ref = ref.strip()
    if not ref:
        raise InvalidArgument("no image given")
    head = ref.split(":", 1)[0].lower()
    scheme = head if head in ("file", "http", "https") or "://" in ref else ""
    if scheme == "file":
        return await _from_file(ref, vault, reporter)
    if scheme in ("http", "https"):
        return await _from_url(ref, vault, reporter)
    if scheme:
        raise InvalidArgument(
            f'cannot use "{ref}": unsupported URL scheme "{scheme}"',
            hint="use an alias (see 'ketch find'), file:///absolute/path or http(s)://",
        )
    remote, alias = ref.split(":", 1) if ":" in ref else (None, ref)
    if not alias or any(c in alias for c in "/ \t") or (remote is not None and not remote):
        raise InvalidArgument(
            f'"{ref}" is neither an image alias nor a URL',
            hint="use an alias (see 'ketch find'); local files need file:///absolute/path",
        )
    if remote in (None, BUILTIN_REMOTE) and alias == TINY:
        return await build_tiny(reporter)
    if remote is None and alias.lower() in DEBIAN_ALIASES and DEBIAN_REMOTE in remotes:
        remote = DEBIAN_REMOTE  # Debian's own cloud image, from the Debian remote configured
    elif remote in (None, BUILTIN_REMOTE) and alias.lower() in DEBIAN_ALIASES:
        alias = DEBIAN  # as Multipass resolves "debian": the Debian 12 image
    if remote in (None, BUILTIN_REMOTE) and alias == DEBIAN and build_debian is not None:
        return await build_debian(reporter)
    if remote == BUILTIN_REMOTE:
        offers = f"tiny, {DEBIAN}" if build_debian is not None else "tiny"
        raise NotFound(f'no image "{alias}" on remote "ketch"', hint=f"it offers only: {offers}")
    if remote is None:
        remote = DEFAULT_REMOTE if DEFAULT_REMOTE in remotes else next(iter(remotes), "")
    if remote not in remotes:
        known = ", ".join([BUILTIN_REMOTE, *remotes])
        raise NotFound(f'remote "{remote}" is not known', hint=f"known remotes: {known}")
    return await _from_remote(remote, alias, remotes[remote], vault, reporter)


# -- remotes ---------------------------------------------------------------


async def _from_remote(
    remote: str, alias: str, url: str, vault: Vault, reporter: Reporter
) -> ImageInfo:
    try:
        catalog = await load_catalog(remote, url, vault=vault)
    except ImageError as exc:
        return _cached(remote, alias, vault, reporter, exc)
    image = catalog.lookup(alias)
    if image is None:
        raise NotFound(f'no image "{alias}" on remote "{remote}"', hint=_offer(catalog, remote))
    if image.problem is not None:
        raise ImageError(
            f'refused {image.description} ({image.version}) from remote "{remote}": '
            f"{image.problem}",
            hint="the remote's catalogue is unsafe to use; nothing was downloaded",
        )
    if urlsplit(url).scheme == "http":
        reporter.warn(
            f'remote "{remote}" is read over plain http ({url}): its catalogue '
            "could be altered in transit"
        )
    if not catalog.signed_by:
        reporter.warn(
            f'the catalogue of remote "{remote}" is not signature-checked: '
            + unsigned_reason(remote, url, vault)
        )
    info = await _fetch(image, vault, reporter)
    record = _record(info)
    names = {alias, image.product, image.release, *image.aliases} - {""}
    vault.remember(sorted(f"{remote}:{name}" for name in names), image.version, record)
    return info


def _offer(catalog: Catalog, remote: str) -> str:
    names = [", ".join(i.aliases or (i.product,)) for i in catalog.images if i.supported]
    tiny = "tiny; " if remote == DEFAULT_REMOTE else ""
    return f"'ketch find' shows: {tiny}{'; '.join(names) or 'nothing'}"


async def _fetch(image: CatalogImage, vault: Vault, reporter: Reporter) -> ImageInfo:
    image_id = f"{image.remote}:{image.product}@{image.version}"
    reporter.step(f"Retrieving {image.description} ({image.version})")

    async def get(item: CatalogItem, what: str) -> Path:
        return await vault.fetch(
            item.url,
            sha256=item.sha256,
            size=item.size,
            reporter=reporter,
            what=f"{image.description} {what}",
            owner=image_id,
        )

    disk = await get(image.disk, "disk")
    kernel = await get(image.kernel, "kernel") if image.kernel else None
    initrd = await get(image.initrd, "initrd") if image.initrd else None
    boot = (
        BootSpec(
            kernel=str(kernel), initrd=str(initrd) if initrd else None, cmdline=image.kernel_cmdline
        )
        if kernel
        else BootSpec(firmware=image.firmware)
    )
    return ImageInfo(
        id=image_id,
        release=image.description,
        disk=str(disk),
        disk_format=disk_format(disk, image.disk.url),
        boot=boot,
        aliases=image.aliases,
        remote=image.remote,
        version=image.version,
    )


def _record(info: ImageInfo) -> dict[str, Any]:
    """What the vault remembers of a resolution: digests rather than paths."""
    boot = info.boot
    return {
        "id": info.id,
        "release": info.release,
        "version": info.version,
        "aliases": list(info.aliases),
        "disk": Path(info.disk).name,
        "disk_format": info.disk_format,
        "kernel": boot.kernel and Path(boot.kernel).name,
        "initrd": boot.initrd and Path(boot.initrd).name,
        "cmdline": boot.cmdline,
        "firmware": boot.firmware,
        "digests": [Path(p).name for p in (info.disk, boot.kernel, boot.initrd) if p],
    }


def _cached(
    remote: str, alias: str, vault: Vault, reporter: Reporter, exc: ImageError
) -> ImageInfo:
    for rec in vault.recall(f"{remote}:{alias}"):
        if not all(vault.has(d) for d in rec.get("digests", ())):
            continue
        path = vault.path_for
        when = time.strftime("%Y-%m-%d", time.localtime(rec.get("resolved_at", 0)))
        reporter.warn(
            f"{exc.message}; using the cached {rec['release']} ({rec['version']}), "
            f"last resolved {when}"
        )
        for digest in rec["digests"]:
            vault.touch(digest)
        return ImageInfo(
            id=rec["id"],
            release=rec["release"],
            disk=str(path(rec["disk"])),
            disk_format=rec["disk_format"],
            boot=BootSpec(
                kernel=rec["kernel"] and str(path(rec["kernel"])),
                initrd=rec["initrd"] and str(path(rec["initrd"])),
                cmdline=rec["cmdline"],
                firmware=rec["firmware"],
            ),
            aliases=tuple(rec["aliases"]),
            remote=remote,
            version=rec["version"],
        )
    raise ImageError(
        f'cannot resolve "{remote}:{alias}": {exc.message}',
        hint="no copy of it is cached; try again when the remote is reachable",
    ) from exc


# -- URLs ------------------------------------------------------------------


async def _from_file(ref: str, vault: Vault, reporter: Reporter) -> ImageInfo:
    path = _local_file(ref)
    reporter.step(f"Copying {path.name} into the image cache")
    blob = await vault.fetch(ref, sha256=None, size=None, reporter=reporter, what=path.name)
    return _plain(blob, path.name, ref, vault)


def _local_file(ref: str) -> Path:
    parts = urlsplit(ref)
    if parts.netloc not in ("", "localhost"):
        raise InvalidArgument(
            f'cannot use "{ref}": file URLs cannot name a host ("{parts.netloc}")',
            hint="write file:///absolute/path (three slashes)",
        )
    path = Path(unquote(parts.path))
    if not parts.path or not path.is_absolute():
        raise InvalidArgument(f'cannot use "{ref}": the file URL has no absolute path')
    if not path.exists():
        raise NotFound(f"image file {path} does not exist")
    if not path.is_file():
        raise InvalidArgument(f"image file {path} is not a regular file")
    return path


async def _from_url(ref: str, vault: Vault, reporter: Reporter) -> ImageInfo:
    parts = urlsplit(ref)
    name = Path(unquote(parts.path)).name
    if not parts.hostname:
        raise InvalidArgument(f'cannot use "{ref}": the URL has no host')
    if not name:
        raise InvalidArgument(f'cannot use "{ref}": the URL does not name a file')
    reporter.warn(f"no sha256 is published for {ref}; the download cannot be verified")
    reporter.step(f"Retrieving {name}")
    try:
        blob = await vault.fetch(ref, sha256=None, size=None, reporter=reporter, what=name)
    except DigestMismatch:
        raise
    except ImageError as exc:
        digest = vault.cached_url(ref)
        if digest is None:
            raise
        reporter.warn(f"{exc.message}; using the copy cached earlier")
        blob = vault.path_for(digest)
    return _plain(blob, name, ref, vault)


def _plain(blob: Path, name: str, ref: str, vault: Vault) -> ImageInfo:
    image_id = f"sha256:{blob.name}"
    vault.touch(blob.name, image_id)
    return ImageInfo(
        id=image_id,
        release=name,
        disk=str(blob),
        disk_format=disk_format(blob, ref),
        boot=BootSpec(),
        version=blob.name[:12],
    )


def disk_format(path: Path, source: str) -> str:
    """``qcow2`` or ``raw``; refuses compressed files and qcow2 with external files."""
    with path.open("rb") as f:
        head = f.read(104)
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise ImageError(
                f"{source} is {kind}-compressed; ketch needs a qcow2 or raw disk image",
                hint="decompress it and use file:///path/to/the/image",
            )
    if not head.startswith(_QCOW2_MAGIC):
        return "raw"
    if len(head) < 104:
        raise ImageError(f"{source} is a truncated qcow2 image")
    version, backing_offset = struct.unpack(">IQ", head[4:16])
    incompatible = struct.unpack(">Q", head[72:80])[0] if version >= 3 else 0
    if backing_offset or incompatible & 0b100:
        raise ImageError(
            f"{source} is a qcow2 image that refers to other files (backing or data file)",
            hint="ketch only uses self-contained images; flatten it with 'qemu-img convert'",
        )
    return "qcow2"
