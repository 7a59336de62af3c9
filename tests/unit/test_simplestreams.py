"""Parsing simplestreams catalogues in Ubuntu's published format (and ketch's extension)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from ketch.errors import DigestMismatch, ImageError
from ketch.images.publish import from_image_dir, publish
from ketch.images.simplestreams import parse_products, products_path

BASE = "https://cloud-images.example/releases/"

# Shaped like https://cloud-images.ubuntu.com/releases/streams/v1/index.json
INDEX: dict[str, Any] = {
    "format": "index:1.0",
    "updated": "Fri, 27 Nov 2026 10:00:00 +0000",
    "index": {
        "com.ubuntu.cloud:released:aws": {
            "datatype": "image-ids",
            "format": "products:1.0",
            "path": "streams/v1/com.ubuntu.cloud:released:aws.json",
            "products": ["com.ubuntu.cloud:server:24.04:amd64"],
        },
        "com.ubuntu.cloud:released:download": {
            "datatype": "image-downloads",
            "format": "products:1.0",
            "path": "streams/v1/com.ubuntu.cloud:released:download.json",
            "products": ["com.ubuntu.cloud:server:24.04:amd64"],
        },
    },
}


def item(ftype: str, path: str, digest: str = "ab" * 32, size: int = 123) -> dict[str, Any]:
    return {"ftype": ftype, "path": path, "sha256": digest, "size": size, "md5": "00"}


def version(path: str, *extra: dict[str, Any], **keys: Any) -> dict[str, Any]:
    items = {e["ftype"]: e for e in (item("disk1.img", path), *extra)}
    items["manifest"] = {"ftype": "manifest", "path": path + ".manifest", "size": 9}
    return {"items": items, "label": "release", "pubname": path, **keys}


# Shaped like com.ubuntu.cloud:released:download.json
PRODUCTS: dict[str, Any] = {
    "content_id": "com.ubuntu.cloud:released:download",
    "datatype": "image-downloads",
    "format": "products:1.0",
    "products": {
        "com.ubuntu.cloud:server:24.04:amd64": {
            "aliases": "24.04,default,lts,n,noble",
            "arch": "amd64",
            "os": "ubuntu",
            "release": "noble",
            "release_codename": "Noble Numbat",
            "release_title": "24.04 LTS",
            "supported": True,
            "version": "24.04",
            "versions": {
                "20260301": version("server/releases/noble/release-20260301/noble.img"),
                "20261101": version("server/releases/noble/release-20261101/noble.img"),
                "20260915.1": version("server/releases/noble/release-20260915.1/noble.img"),
            },
        },
        "com.ubuntu.cloud:server:24.04:arm64": {
            "aliases": "24.04,default,lts,n,noble",
            "arch": "arm64",
            "os": "ubuntu",
            "release": "noble",
            "release_title": "24.04 LTS",
            "versions": {"20261201": version("server/noble-arm64.img")},
        },
        "com.ubuntu.cloud:server:22.04:amd64": {
            "aliases": "22.04,j,jammy",
            "arch": "amd64",
            "os": "ubuntu",
            "release": "jammy",
            "release_title": "22.04 LTS",
            "supported": True,
            "versions": {
                "20261020": version("server/jammy-20261020.img"),
                # the newest version has no disk yet: the previous one is used
                "20261120": {"items": {"manifest": {"ftype": "manifest", "path": "m"}}},
            },
        },
        "com.ubuntu.cloud:server:14.04:amd64": {
            "aliases": "14.04,t,trusty",
            "arch": "amd64",
            "os": "ubuntu",
            "release": "trusty",
            "release_title": "14.04 LTS",
            "supported": False,
            "versions": {"20191107": version("server/trusty.img")},
        },
        "com.ubuntu.cloud:server:10.10:amd64": {  # only a tarball: not usable
            "aliases": "10.10,m,maverick",
            "arch": "amd64",
            "release": "maverick",
            "versions": {"20120410": {"items": {"tar.gz": item("tar.gz", "m.tar.gz")}}},
        },
    },
}


def catalog(products: dict[str, Any] = PRODUCTS) -> Any:
    return parse_products(products, remote="release", base_url=BASE)


def test_index_picks_the_image_downloads_catalogue() -> None:
    assert products_path(INDEX) == "streams/v1/com.ubuntu.cloud:released:download.json"


@pytest.mark.parametrize(
    "bad", [[], {"index": {}}, {"index": {"x": {"datatype": "image-ids", "path": "p"}}}]
)
def test_index_without_downloads_is_an_error(bad: Any) -> None:
    with pytest.raises(ImageError):
        products_path(bad, remote="release")


def test_products_of_the_host_arch_with_a_usable_disk() -> None:
    cat = catalog()
    assert [i.product for i in cat.images] == [
        "com.ubuntu.cloud:server:14.04:amd64",
        "com.ubuntu.cloud:server:22.04:amd64",
        "com.ubuntu.cloud:server:24.04:amd64",
    ]
    arm = parse_products(PRODUCTS, remote="release", base_url=BASE, arch="arm64")
    assert [i.version for i in arm.images] == ["20261201"]


def test_newest_version_and_its_disk() -> None:
    noble = catalog().lookup("noble")
    assert noble is not None
    assert noble.version == "20261101"
    assert noble.disk.ftype == "disk1.img"
    assert noble.disk.url == BASE + "server/releases/noble/release-20261101/noble.img"
    assert (noble.disk.sha256, noble.disk.size) == ("ab" * 32, 123)
    assert noble.description == "Ubuntu 24.04 LTS"
    assert noble.firmware == "bios"
    assert noble.kernel is None and noble.initrd is None


def test_newest_version_with_a_disk_wins() -> None:
    jammy = catalog().lookup("jammy")
    assert jammy is not None and jammy.version == "20261020"


def test_aliases_are_comma_separated_per_product() -> None:
    cat = catalog()
    noble = cat.lookup("lts")
    assert noble is not None
    assert noble.aliases == ("24.04", "default", "lts", "n", "noble", "ubuntu")
    for name in ("24.04", "n", "default", "ubuntu", "com.ubuntu.cloud:server:24.04:amd64"):
        assert cat.lookup(name) is noble
    jammy = cat.lookup("22.04")
    assert jammy is not None and jammy.aliases == ("22.04", "j", "jammy")
    assert cat.lookup("plucky") is None


def test_supported_flag() -> None:
    cat = catalog()
    assert [i.release for i in cat.images if not i.supported] == ["trusty"]


def test_preferred_disk_item() -> None:
    products = json.loads(json.dumps(PRODUCTS))
    noble = products["products"]["com.ubuntu.cloud:server:24.04:amd64"]
    items = noble["versions"]["20261101"]["items"]
    items["uefi1.img"] = item("uefi1.img", "u.img", "cd" * 32)
    items["disk.img"] = item("disk.img", "d.img", "ef" * 32)
    assert catalog(products).images[-1].disk.ftype == "disk1.img"
    del items["disk1.img"]
    image = catalog(products).images[-1]
    assert (image.disk.ftype, image.firmware) == ("uefi1.img", "uefi")
    del items["uefi1.img"]
    assert catalog(products).images[-1].disk.url == BASE + "d.img"


def test_kernel_items_need_a_cmdline() -> None:
    kernel = item("boot-kernel", "k/vmlinuz", "11" * 32)
    initrd = item("boot-initrd", "k/initrd", "22" * 32)
    product: dict[str, Any] = {
        "aliases": "tiny",
        "arch": "amd64",
        "os": "ketch",
        "release": "tiny",
        "release_title": "ketch tiny",
        "versions": {
            "20261126": version("k/disk.qcow2", kernel, initrd, kernel_cmdline="console=ttyS0"),
        },
    }
    image = catalog({"products": {"com.ketch:tiny:amd64": product}}).images[0]
    assert image.kernel is not None and image.kernel.url == BASE + "k/vmlinuz"
    assert image.initrd is not None and image.initrd.sha256 == "22" * 32
    assert image.kernel_cmdline == "console=ttyS0"
    del product["versions"]["20261126"]["kernel_cmdline"]  # MAAS-style: boot firmware
    image = catalog({"products": {"com.ketch:tiny:amd64": product}}).images[0]
    assert image.kernel is None and image.initrd is None


@pytest.mark.parametrize("bad", [None, [], {"products": []}, {"products": "x"}])
def test_malformed_products_file(bad: Any) -> None:
    with pytest.raises(ImageError, match="malformed"):
        catalog(bad)


def test_publish_round_trip(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.mkdir()
    files = {"disk.qcow2": b"QFI\xfb" + b"\0" * 100, "vmlinuz": b"k", "initrd.img": b"i"}
    for name, data in files.items():
        (image / name).write_bytes(data)
    manifest: dict[str, Any] = {
        "version": "20261126",
        "release": "tiny",
        "kernel_cmdline": "console=ttyS0 quiet",
        "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()},
    }
    (image / "manifest.json").write_text(json.dumps(manifest))
    tree = tmp_path / "tree"
    index = publish(tree, [from_image_dir(image)])
    url = "http://127.0.0.1:1/"
    products = json.loads((tree / products_path(json.loads(index.read_text()))).read_text())
    got = parse_products(products, remote="mine", base_url=url).lookup("tiny")
    assert got is not None
    assert got.version == "20261126"
    assert got.kernel_cmdline == "console=ttyS0 quiet"
    for ftype, name in (("disk1.img", "disk.qcow2"), ("boot-kernel", "vmlinuz")):
        it = got.items[ftype]
        assert it.sha256 == manifest["files"][name]
        assert (tree / it.url.removeprefix(url)).read_bytes() == files[name]
    (image / "vmlinuz").write_bytes(b"tampered")
    with pytest.raises(DigestMismatch):
        from_image_dir(image)
