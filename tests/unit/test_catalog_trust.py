"""What a simplestreams catalogue may point at (issue 12 item 2), without a server."""

from __future__ import annotations

from typing import Any

import pytest

from ketch.images.simplestreams import CatalogItem, item_problem, parse_products, same_origin

BASE = "https://images.example/releases/"
SHA = "ab" * 32


@pytest.mark.parametrize(
    ("url", "same"),
    [
        ("https://images.example/releases/x.img", True),
        ("https://IMAGES.example/other/x.img", True),
        ("http://images.example/releases/x.img", False),
        ("https://images.example:8443/x.img", False),
        ("https://elsewhere.example/x.img", False),
        ("file:///root/.ssh/id_ed25519", False),
    ],
)
def test_same_origin(url: str, same: bool) -> None:
    assert same_origin(url, BASE) is same


def test_item_problem_names_the_item() -> None:
    good = CatalogItem("boot-initrd", BASE + "i", SHA, 1)
    assert item_problem(good, BASE) is None
    foreign = CatalogItem("boot-initrd", "file:///etc/shadow", SHA, 1)
    assert "item 'boot-initrd' points at file://" in (item_problem(foreign, BASE) or "")
    unsigned = CatalogItem("boot-kernel", BASE + "k", None, 1)
    assert item_problem(unsigned, BASE) == "item 'boot-kernel' has no sha256"


def product(**items: dict[str, Any]) -> dict[str, Any]:
    return {
        "products": {
            "p:amd64": {
                "arch": "amd64",
                "aliases": "p",
                "versions": {"1": {"kernel_cmdline": "console=ttyS0", "items": items}},
            }
        }
    }


def test_parse_marks_an_unsafe_version_instead_of_hiding_it() -> None:
    disk = {"ftype": "disk1.img", "path": "d.img", "sha256": SHA}
    kernel = {"ftype": "boot-kernel", "path": "k", "sha256": SHA}
    initrd = {"ftype": "boot-initrd", "path": "file:///root/ssh/id_ed25519"}
    cat = parse_products(product(d=disk, k=kernel, i=initrd), remote="r", base_url=BASE)
    image = cat.lookup("p")
    assert image is not None and image.problem is not None
    assert "boot-initrd" in image.problem
    # Items ketch does not use are not judged.
    other = {"ftype": "root.tar.xz", "path": "http://elsewhere/x"}
    cat = parse_products(product(d=disk, k=kernel, o=other), remote="r", base_url=BASE)
    image = cat.lookup("p")
    assert image is not None and image.problem is None
