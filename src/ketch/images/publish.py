"""Write a simplestreams tree that ``ketch`` (and Multipass) can read.

The inverse of :mod:`ketch.images.simplestreams`.  ``publish(tree, products)``
copies each product version's files to ``images/<product>/<version>/<name>``
under ``tree``, and writes ``streams/v1/<content id>.json`` (the products
file) plus ``streams/v1/index.json``.  Publishing into an existing tree adds
versions to the products already there, so a tree can grow release by release.

Two helpers build a :class:`PublishedProduct` from what ketch has at hand:
:func:`from_image_dir` for a directory in the tiny image's layout
(``vmlinuz``, ``initrd.img``, ``disk.qcow2`` and a ``manifest.json`` holding
``version``, ``release``, ``kernel_cmdline`` and ``files`` {name: sha256}),
and :func:`from_disk` for a plain qcow2 cloud image.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ketch.errors import DigestMismatch, ImageError
from ketch.images.simplestreams import CMDLINE_KEY, INDEX_PATH, INITRD_FTYPE, KERNEL_FTYPE

CONTENT_ID = "com.ketch.images:download"
MANIFEST = "manifest.json"
# Files of the tiny image's directory and the ftype each is published as.
IMAGE_DIR_FILES = {"disk.qcow2": "disk1.img", "vmlinuz": KERNEL_FTYPE, "initrd.img": INITRD_FTYPE}


@dataclass(frozen=True)
class PublishedFile:
    """A local file to publish as one item of a product version."""

    source: Path
    ftype: str
    name: str = ""  # file name in the tree; the source's name when empty


@dataclass(frozen=True)
class PublishedProduct:
    """One version of one product, with its files."""

    product: str  # e.g. "com.ketch:tiny:amd64"
    version: str  # e.g. "20261126"
    release: str
    release_title: str
    files: Sequence[PublishedFile]
    aliases: Sequence[str] = ()
    os: str = "ubuntu"
    arch: str = "amd64"
    kernel_cmdline: str | None = None
    supported: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # more product keys


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name)


def _version_entry(tree: Path, product: PublishedProduct) -> dict[str, Any]:
    items: dict[str, Any] = {}
    for pf in product.files:
        name = pf.name or pf.source.name
        rel = f"images/{_safe(product.product)}/{_safe(product.version)}/{name}"
        target = tree / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.resolve() != pf.source.resolve():
            shutil.copyfile(pf.source, target)
        items[pf.ftype] = {
            "ftype": pf.ftype,
            "path": rel,
            "sha256": sha256_file(target),
            "size": target.stat().st_size,
        }
    entry: dict[str, Any] = {"items": items}
    if product.kernel_cmdline is not None:
        entry[CMDLINE_KEY] = product.kernel_cmdline
    return entry


def publish(
    tree: Path, products: Sequence[PublishedProduct], *, content_id: str = CONTENT_ID
) -> Path:
    """Add ``products`` to the simplestreams tree at ``tree``; return its index.json."""
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    products_rel = f"streams/v1/{content_id}.json"
    products_file = tree / products_rel
    doc: dict[str, Any] = {}
    if products_file.exists():
        doc = json.loads(products_file.read_text())
    entries: dict[str, Any] = doc.setdefault("products", {})
    for product in products:
        entry = entries.setdefault(product.product, {})
        entry.update(product.extra)
        entry.update(
            aliases=",".join(product.aliases),
            arch=product.arch,
            os=product.os,
            release=product.release,
            release_title=product.release_title,
            supported=product.supported,
        )
        entry.setdefault("versions", {})[product.version] = _version_entry(tree, product)
    doc.update(
        content_id=content_id,
        datatype="image-downloads",
        format="products:1.0",
        updated=stamp,
    )
    _write_json(products_file, doc)
    index = {
        "format": "index:1.0",
        "updated": stamp,
        "index": {
            content_id: {
                "datatype": "image-downloads",
                "format": "products:1.0",
                "path": products_rel,
                "products": sorted(entries),
                "updated": stamp,
            }
        },
    }
    _write_json(tree / INDEX_PATH, index)
    return tree / INDEX_PATH


def from_image_dir(
    directory: Path, *, product: str = "com.ketch:tiny:amd64", aliases: Sequence[str] = ("tiny",)
) -> PublishedProduct:
    """A product for an image directory in the tiny image's layout, digests checked."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read {directory / MANIFEST}: {exc}") from exc
    expected = manifest.get("files", {})
    files = []
    for name, ftype in IMAGE_DIR_FILES.items():
        path = directory / name
        if not path.exists():
            continue
        if name in expected and (actual := sha256_file(path)) != expected[name]:
            raise DigestMismatch(str(path), expected[name], actual)
        files.append(PublishedFile(path, ftype))
    if not files or files[0].ftype != "disk1.img":
        raise ImageError(f"{directory} has no disk.qcow2")
    version = str(manifest.get("version", ""))
    release = str(manifest.get("release", "tiny"))
    return PublishedProduct(
        product=product,
        version=version or time.strftime("%Y%m%d", time.gmtime()),
        release=release,
        release_title=str(manifest.get("release_title", release)),
        files=files,
        aliases=tuple(aliases),
        os=str(manifest.get("os", "ketch")),
        kernel_cmdline=manifest.get("kernel_cmdline"),
    )


def from_disk(
    disk: Path,
    *,
    product: str,
    version: str,
    release: str,
    release_title: str,
    aliases: Sequence[str] = (),
    ftype: str = "disk1.img",
) -> PublishedProduct:
    """A product whose only item is one disk image (a qcow2 cloud image)."""
    return PublishedProduct(
        product=product,
        version=version,
        release=release,
        release_title=release_title,
        files=[PublishedFile(disk, ftype)],
        aliases=tuple(aliases),
    )
