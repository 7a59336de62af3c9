"""Parse a simplestreams tree: which images a remote offers, and where their files are.

A remote is a URL whose ``streams/v1/index.json`` (format ``index:1.0``) lists
catalogues; ketch reads the first entry with ``datatype: image-downloads``
(preferring a content id ending in ``:download``, as Ubuntu names it) and
loads the products file at its ``path`` (format ``products:1.0``)::

    {"products": {"com.ubuntu.cloud:server:24.04:amd64": {
        "aliases": "24.04,default,lts,n,noble", "arch": "amd64",
        "os": "ubuntu", "release": "noble", "release_title": "24.04 LTS",
        "supported": true,
        "versions": {"20261101": {"items": {
            "disk1.img": {"ftype": "disk1.img", "path": "server/...img",
                          "sha256": "...", "size": 123}}}}}}}

Item paths are relative to the remote's URL.  For each product of the wanted
architecture ketch keeps the newest version (greatest version key) that has a
disk item, preferring ftype ``disk1.img`` (qcow2), then ``uefi1.img``, then
``disk.img``.

ketch's extension for images that boot a kernel directly (the tiny image):
items with ftype ``boot-kernel`` and ``boot-initrd`` next to the disk, and a
``kernel_cmdline`` string in the product version (next to ``items``).  A
version is booted directly only when it has both a ``boot-kernel`` item and
a ``kernel_cmdline``; MAAS-style streams that ship kernels without a command
line keep booting through firmware.

What a catalogue may point at (issue 12): every item ketch uses (the disk,
and the kernel and initrd of a directly booted version) must have a sha256,
and its URL, after resolving the item's path against the remote, must have
the remote's scheme and host: a remote (``http(s)`` only, see
:mod:`ketch.images.catalog`) cannot name ``file://`` items or another
server; ``file://`` is only for an image the user names on the command
line.  A version breaking these rules is kept as the newest,
with :attr:`CatalogImage.problem` saying why, so that resolving it fails
loudly instead of falling back to something else.

This module does no I/O: it turns parsed JSON into :class:`CatalogImage`.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from ketch.errors import ImageError

INDEX_PATH = "streams/v1/index.json"
DISK_FTYPES = ("disk1.img", "uefi1.img", "disk.img")
KERNEL_FTYPE = "boot-kernel"
INITRD_FTYPE = "boot-initrd"
CMDLINE_KEY = "kernel_cmdline"

_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def host_arch() -> str:
    """The simplestreams name of this host's architecture (``amd64`` by default)."""
    return _ARCHES.get(platform.machine().lower(), "amd64")


@dataclass(frozen=True)
class CatalogItem:
    """One file of an image version: absolute URL, digest and size."""

    ftype: str
    url: str
    sha256: str | None
    size: int | None


@dataclass(frozen=True)
class CatalogImage:
    """The newest usable version of one product on one remote."""

    remote: str
    product: str
    version: str
    release: str
    release_title: str
    aliases: tuple[str, ...]
    os: str
    items: Mapping[str, CatalogItem]  # by ftype
    kernel_cmdline: str | None = None
    supported: bool = True
    release_codename: str = ""
    arch: str = "amd64"
    problem: str | None = None  # why the catalogue's entry is unsafe to use (see module doc)

    @property
    def disk(self) -> CatalogItem:
        """The preferred disk item (there always is one)."""
        for ftype in DISK_FTYPES:
            if ftype in self.items:
                return self.items[ftype]
        raise AssertionError(f"{self.product} has no disk item")  # parse_products ensures one

    @property
    def kernel(self) -> CatalogItem | None:
        """The kernel to boot directly, or None for firmware boot."""
        if self.kernel_cmdline is None:
            return None
        return self.items.get(KERNEL_FTYPE)

    @property
    def initrd(self) -> CatalogItem | None:
        return self.items.get(INITRD_FTYPE) if self.kernel is not None else None

    @property
    def firmware(self) -> str:
        """``uefi`` for UEFI-only disks, else ``bios``."""
        return "uefi" if self.disk.ftype == "uefi1.img" else "bios"

    @property
    def description(self) -> str:
        """Human name, e.g. "Ubuntu 24.04 LTS"."""
        name = {"ubuntu": "Ubuntu", "ketch": "ketch"}.get(self.os, self.os)
        return f"{name} {self.release_title or self.release}".strip()

    def matches(self, name: str) -> bool:
        """True when ``name`` is one of this image's aliases or its product id."""
        return name in self.aliases or name == self.product


@dataclass(frozen=True)
class Catalog:
    """Everything one remote offers for one architecture."""

    remote: str
    url: str
    images: tuple[CatalogImage, ...] = field(default_factory=tuple)
    signed_by: str = ""  # fingerprint of the key that signed the catalogue; "" when unsigned

    def lookup(self, name: str) -> CatalogImage | None:
        """The image with alias or product id ``name``; then by release codename."""
        for image in self.images:
            if image.matches(name):
                return image
        for image in self.images:
            if name == image.release:
                return image
        return None


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImageError(f"malformed simplestreams data: {what} is not an object")
    return value


def products_path(index: Any, *, remote: str = "") -> str:
    """The products-file path (relative to the remote URL) named by ``index.json``."""
    where = f" of remote {remote!r}" if remote else ""
    doc = _obj(index, f"index.json{where}")
    entries = _obj(doc.get("index"), f'"index" in index.json{where}')
    found = [
        (key, entry)
        for key, entry in entries.items()
        if isinstance(entry, dict)
        and entry.get("datatype") == "image-downloads"
        and isinstance(entry.get("path"), str)
    ]
    if not found:
        raise ImageError(f"index.json{where} has no image-downloads catalogue")
    found.sort(key=lambda kv: (not str(kv[0]).endswith(":download"), str(kv[0])))
    return str(found[0][1]["path"])


def same_origin(url: str, base_url: str) -> bool:
    """True when ``url`` has the scheme and host (and port) of ``base_url``."""
    a, b = urlsplit(url), urlsplit(base_url)
    return (a.scheme.lower(), a.netloc.lower()) == (b.scheme.lower(), b.netloc.lower())


def origin_problem(url: str, base_url: str, what: str) -> str | None:
    """Why ``url`` (named by the catalogue at ``base_url``) may not be fetched, or None."""
    if same_origin(url, base_url):
        return None
    parts = urlsplit(url)
    where = f"{parts.scheme}://{parts.netloc}" if parts.scheme else url
    base = urlsplit(base_url)
    return (
        f"{what} points at {where} ({url}), not at the remote's own {base.scheme}://{base.netloc}"
    )


def item_problem(item: CatalogItem, base_url: str) -> str | None:
    """Why a used item of a catalogue is unsafe: a foreign URL or no sha256."""
    return origin_problem(item.url, base_url, f"item {item.ftype!r}") or (
        None if item.sha256 else f"item {item.ftype!r} has no sha256"
    )


def _item(raw: Any, base_url: str) -> CatalogItem | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
        return None
    sha = raw.get("sha256")
    size = raw.get("size")
    return CatalogItem(
        ftype=str(raw.get("ftype", "")),
        url=urljoin(base_url, raw["path"]),
        sha256=sha.lower() if isinstance(sha, str) and sha else None,
        size=size if isinstance(size, int) and size >= 0 else None,
    )


def _usable_items(version: Any, base_url: str) -> dict[str, CatalogItem] | None:
    if not isinstance(version, dict) or not isinstance(version.get("items"), dict):
        return None
    items: dict[str, CatalogItem] = {}
    for raw in version["items"].values():
        item = _item(raw, base_url)
        if item is not None and item.ftype and item.ftype not in items:
            items[item.ftype] = item
    if not any(ftype in items and items[ftype].sha256 for ftype in DISK_FTYPES):
        return None
    return items


def _image(remote: str, base_url: str, name: str, product: dict[str, Any]) -> CatalogImage | None:
    versions = product.get("versions")
    if not isinstance(versions, dict):
        return None
    for key in sorted(versions, reverse=True):
        items = _usable_items(versions[key], base_url)
        if items is None:
            continue
        cmdline = versions[key].get(CMDLINE_KEY)
        aliases = [a.strip() for a in str(product.get("aliases", "")).split(",") if a.strip()]
        if "lts" in aliases and product.get("os", "ubuntu") == "ubuntu":
            aliases.append("ubuntu")  # as Multipass does
        image = CatalogImage(
            remote=remote,
            product=name,
            version=str(key),
            release=str(product.get("release", "")),
            release_title=str(product.get("release_title", "")),
            aliases=tuple(dict.fromkeys(aliases)),
            os=str(product.get("os", "")),
            items=items,
            kernel_cmdline=cmdline if isinstance(cmdline, str) else None,
            supported=product.get("supported", True) is not False or "devel" in aliases,
            release_codename=str(product.get("release_codename", "")),
            arch=str(product.get("arch", "")),
        )
        used = [image.disk, image.kernel, image.initrd]
        problems = [item_problem(item, base_url) for item in used if item is not None]
        problem = next((p for p in problems if p), None)
        return image if problem is None else dataclasses.replace(image, problem=problem)
    return None


def parse_products(products: Any, *, remote: str, base_url: str, arch: str = "amd64") -> Catalog:
    """The :class:`Catalog` of a products file; ``base_url`` resolves item paths."""
    doc = _obj(products, f"products file of remote {remote!r}")
    entries = _obj(doc.get("products"), f'"products" of remote {remote!r}')
    base = base_url if base_url.endswith("/") else base_url + "/"
    images = []
    for name in sorted(entries):
        product = entries[name]
        if not isinstance(product, dict) or product.get("arch") != arch:
            continue
        image = _image(remote, base, name, product)
        if image is not None:
            images.append(image)
    return Catalog(remote=remote, url=base, images=tuple(images))
