"""Issue 12 items 2 and 7: a hostile simplestreams remote on 127.0.0.1.

The remote's catalogue tries to make ketch read a host file (a ``file://``
initrd naming ketch's own private key), fetch from another server, use an
item without a digest, or download far more than it announces; each is
refused with the numbers or the item named, and nothing reaches the vault.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from streams_server import StreamsServer

from ketch.errors import ImageError
from ketch.images import catalog as catalog_module
from ketch.images.catalog import load_catalog
from ketch.images.publish import PublishedFile, PublishedProduct, publish
from ketch.images.resolve import resolve
from ketch.images.vault import Vault
from ketch.model import ImageInfo
from ketch.progress import ListReporter, Reporter

T = TypeVar("T")
PRODUCT = "com.ketch:kettle:amd64"
VERSION = "20261126"
PRODUCTS = "streams/v1/com.ketch.images:download.json"
EXTRA = 200 << 20  # what the hostile server offers beyond the file
SLACK = 32 << 20  # socket buffers on loopback: what a client cannot refuse to receive


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 120))


@dataclass
class Hostile:
    server: StreamsServer
    tree: Path
    secret: Path  # stands for <root>/ssh/id_ed25519
    vault: Vault

    def edit(self, change: Any) -> None:
        """Apply ``change`` to the version's items (a dict by ftype) and save the catalogue."""
        path = self.tree / PRODUCTS
        doc = json.loads(path.read_text())
        items = doc["products"][PRODUCT]["versions"][VERSION]["items"]
        change({item["ftype"]: item for item in items.values()})
        path.write_text(json.dumps(doc))

    def item_path(self, ftype: str) -> str:
        doc = json.loads((self.tree / PRODUCTS).read_text())
        items = doc["products"][PRODUCT]["versions"][VERSION]["items"].values()
        return "/" + str(next(i["path"] for i in items if i["ftype"] == ftype))

    def resolve(self, reporter: Reporter | None = None) -> ImageInfo:
        async def no_tiny(_: Reporter) -> ImageInfo:
            raise AssertionError("not the tiny image")

        return run(
            resolve(
                "kettle",
                remotes={"evil": self.server.url},
                vault=self.vault,
                build_tiny=no_tiny,
                reporter=reporter or ListReporter(),
            )
        )

    def vault_bytes(self) -> list[bytes]:
        return [p.read_bytes() for p in self.vault.root.rglob("*") if p.is_file()]


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Hostile]:
    src = tmp_path / "src"
    src.mkdir()
    disk = src / "kettle.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "8M"], check=True)
    (src / "vmlinuz").write_bytes(b"kernel" * 100)
    (src / "initrd.img").write_bytes(b"initrd" * 100)
    secret = tmp_path / "root" / "ssh" / "id_ed25519"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + os.urandom(64).hex().encode())
    tree = tmp_path / "tree"
    product = PublishedProduct(
        product=PRODUCT,
        version=VERSION,
        release="kettle",
        release_title="kettle",
        os="ketch",
        aliases=("kettle",),
        kernel_cmdline="console=ttyS0",
        files=[
            PublishedFile(disk, "disk1.img"),
            PublishedFile(src / "vmlinuz", "boot-kernel"),
            PublishedFile(src / "initrd.img", "boot-initrd"),
        ],
    )
    publish(tree, [product])
    with StreamsServer(tree) as server:
        yield Hostile(server, tree, secret, Vault(tmp_path / "vault"))


def nothing_downloaded(h: Hostile) -> None:
    assert not list((h.vault.root / "sha256").glob("*"))
    for ftype in ("disk1.img", "boot-kernel"):
        assert h.server.counts[h.item_path(ftype)] == 0


def test_the_untouched_remote_resolves(hostile: Hostile) -> None:
    reporter = ListReporter()
    info = hostile.resolve(reporter)
    assert info.boot.initrd is not None and Path(info.boot.initrd).read_bytes() == b"initrd" * 100
    assert any("plain http" in w for w in reporter.warnings)


def test_a_file_url_initrd_never_reaches_the_vault(hostile: Hostile) -> None:
    def point_at_the_key(items: dict[str, dict[str, Any]]) -> None:
        # As reproduced on main: a file:// initrd, and no sha256 to fail on.
        items["boot-initrd"].update(path=hostile.secret.as_uri())
        del items["boot-initrd"]["sha256"], items["boot-initrd"]["size"]

    hostile.edit(point_at_the_key)
    with pytest.raises(ImageError, match="item 'boot-initrd' points at file://") as err:
        hostile.resolve()
    assert err.value.exit_code == 2
    assert "nothing was downloaded" in (err.value.hint or "")
    key = hostile.secret.read_bytes()
    assert not any(key in data for data in hostile.vault_bytes())
    assert not hostile.vault.has(hashlib.sha256(key).hexdigest())
    nothing_downloaded(hostile)


def test_an_item_on_another_server_is_refused(hostile: Hostile) -> None:
    elsewhere = f"http://127.0.0.2:{hostile.server.port}{hostile.item_path('disk1.img')}"
    hostile.edit(lambda items: items["disk1.img"].update(path=elsewhere))
    with pytest.raises(ImageError, match=r"points at http://127\.0\.0\.2"):
        hostile.resolve()
    nothing_downloaded(hostile)


@pytest.mark.parametrize("ftype", ["boot-kernel", "boot-initrd"])
def test_a_boot_item_without_sha256_is_refused(hostile: Hostile, ftype: str) -> None:
    hostile.edit(lambda items: items[ftype].pop("sha256"))
    with pytest.raises(ImageError, match=f"item '{ftype}' has no sha256"):
        hostile.resolve()
    nothing_downloaded(hostile)


def test_a_products_file_elsewhere_is_refused(hostile: Hostile) -> None:
    index = hostile.tree / "streams/v1/index.json"
    doc = json.loads(index.read_text())
    for entry in doc["index"].values():
        entry["path"] = hostile.secret.as_uri()
    index.write_text(json.dumps(doc))
    with pytest.raises(ImageError, match="products file points at file://"):
        run(load_catalog("evil", hostile.server.url, vault=hostile.vault))
    assert not any(hostile.secret.read_bytes() in d for d in hostile.vault_bytes())


@pytest.mark.parametrize("announce", [False, True], ids=["close-delimited", "content-length"])
def test_a_download_stops_at_the_announced_size(hostile: Hostile, announce: bool) -> None:
    path = hostile.item_path("boot-initrd")
    hostile.edit(lambda items: items["boot-initrd"].update(size=1024))
    hostile.server.oversend[path] = EXTRA
    if announce:
        hostile.server.announce.add(path)
    with pytest.raises(ImageError, match="1024") as err:
        hostile.resolve()
    sent = hostile.server.wait_for_sent(path)
    assert sent < SLACK, f"the server got {sent} bytes out before ketch hung up"
    assert ("announces" if announce else "more than the 1024 bytes") in err.value.message
    assert not list((hostile.vault.root / "tmp").glob("*"))
    assert not hostile.vault.has(hashlib.sha256(b"initrd" * 100).hexdigest())


def test_a_catalogue_file_is_read_up_to_a_bound(
    hostile: Hostile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_module, "MAX_CATALOG", 1 << 20)
    hostile.server.oversend["/" + PRODUCTS] = EXTRA
    with pytest.raises(ImageError, match=f"larger than {1 << 20} bytes"):
        run(load_catalog("evil", hostile.server.url, vault=hostile.vault))
    sent = hostile.server.wait_for_sent("/" + PRODUCTS)
    assert sent < (1 << 20) + SLACK, f"the server got {sent} bytes out before ketch hung up"


@pytest.mark.parametrize(
    "url", ["http://cloud-images.ubuntu.com/releases/", "ftp://example.invalid/", "file:///srv/"]
)
def test_remote_urls_that_are_refused_before_any_request(url: str, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match='remote "release"'):
        run(load_catalog("release", url, vault=Vault(tmp_path / "vault")))
