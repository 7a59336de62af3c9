"""Issue 3, end to end: ``ketch find`` and ``ketch launch`` from a loopback simplestreams remote.

The tiny image is published in Ubuntu's simplestreams format on a real HTTP
server on 127.0.0.1; ketch downloads it, verifies its sha256 and boots it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from ketchcli import Ketch, unique
from streams_server import StreamsServer

from ketch.images.publish import from_image_dir, publish
from ketch.model import ImageInfo

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def loopback(
    tiny_image: ImageInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StreamsServer]:
    tree = tmp_path_factory.mktemp("streams")
    product = from_image_dir(
        Path(tiny_image.disk).parent, product="com.ketch:skiff:amd64", aliases=("skiff", "sk")
    )
    publish(tree, [product])
    with StreamsServer(tree) as server:
        yield server


def test_find_and_launch_from_loopback_remote(ketch: Ketch, loopback: StreamsServer) -> None:
    ketch.run("set", f"local.remote.loop={loopback.url}")
    name, name2 = unique("remote"), unique("remote")
    try:
        found = ketch.json("find", "loop:")  # Multipass's shape: keyed by image name
        assert found["images"]["loop:skiff"]["remote"] == "loop"
        table = ketch.run("find").stdout
        assert "loop:skiff" in table

        done = ketch.run("launch", "loop:skiff", "--name", name, "--memory", "512M")
        assert "Launched: " + name in done.stdout
        assert "%" in done.stderr  # progress was shown (plain lines: not a terminal)
        assert ketch.exec(name, "cat", "/var/lib/cloud/instance/boot-finished")
        info = ketch.info(name)
        assert info["image"] == "loop:skiff"
        assert info["image_hash"].startswith("loop:")
        # A second launch of the same image downloads nothing.
        before = dict(loopback.counts)
        ketch.run("launch", "loop:sk", "--name", name2, "--memory", "512M")
        disk_paths = [p for p in before if p.endswith(".qcow2") or p.endswith(".img")]
        assert disk_paths and all(loopback.counts[p] == before[p] for p in disk_paths)
    finally:
        ketch.run("delete", "--purge", name, name2, check=False)
        ketch.run("set", "local.remote.loop=", check=False)


def test_a_remote_cannot_hand_ketchs_private_key_to_qemu(
    ketch: Ketch, vm: str, loopback: StreamsServer, tmp_path: Path
) -> None:
    """Issue 12 item 2 as reproduced: a file:// initrd naming <root>/ssh/id_ed25519."""
    key = ketch.root / "ssh" / "id_ed25519"
    assert key.is_file()  # the vm fixture's launch made it
    tree = tmp_path / "evil"
    shutil.copytree(loopback.root, tree)
    products = next((tree / "streams/v1").glob("*:download.json"))
    doc = json.loads(products.read_text())
    for product in doc["products"].values():
        for version in product["versions"].values():
            for item in version["items"].values():
                if item["ftype"] == "boot-initrd":
                    item["path"] = key.as_uri()
                    del item["sha256"], item["size"]
    products.write_text(json.dumps(doc))
    name = unique("evil")
    with StreamsServer(tree) as evil:
        ketch.run("set", f"local.remote.evil={evil.url}")
        try:
            done = ketch.run("launch", "evil:skiff", "--name", name, check=False)
        finally:
            ketch.run("set", "local.remote.evil=", check=False)
            ketch.run("delete", "--purge", name, check=False)
    assert done.returncode == 2, done.stderr
    assert "item 'boot-initrd' points at file://" in done.stderr
    secret = key.read_bytes()
    vault = ketch.root / "vault"
    assert not any(secret in p.read_bytes() for p in vault.rglob("*") if p.is_file())
    assert all(evil.counts[p] == 0 for p in evil.counts if not p.startswith("/streams/"))
