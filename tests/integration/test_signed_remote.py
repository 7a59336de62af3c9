"""Issue 12 item 2: a remote's signed (``.sjson``) catalogue, verified with gpgv.

The test makes its own OpenPGP keys with ``gpg --batch`` in a temporary
GNUPGHOME, signs a loopback remote's index and products file, and puts the
public keyring where ketch looks for that remote's keyring.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from streams_server import StreamsServer

from ketch.errors import ImageError
from ketch.images.catalog import load_catalog
from ketch.images.publish import PublishedFile, PublishedProduct, publish
from ketch.images.resolve import resolve
from ketch.images.vault import Vault
from ketch.model import ImageInfo
from ketch.progress import ListReporter, Reporter

pytestmark = pytest.mark.skipif(
    shutil.which("gpg") is None or shutil.which("gpgv") is None, reason="needs gpg and gpgv"
)

T = TypeVar("T")
PRODUCTS = "streams/v1/com.ketch.images:download.json"
INDEX = "streams/v1/index.json"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 120))


class Gpg:
    """``gpg --batch`` in its own GNUPGHOME, with one signing key."""

    def __init__(self, home: Path, uid: str) -> None:
        home.mkdir(mode=0o700)
        self.home = home
        self("--quick-generate-key", uid, "ed25519", "sign", "never")
        out = self("--list-secret-keys", "--with-colons").stdout.decode()
        self.fingerprint = next(
            line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")
        )

    def __call__(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "", *args],
            env={**os.environ, "GNUPGHOME": str(self.home)},
            capture_output=True,
            check=True,
        )

    def export(self, keyring: Path) -> None:
        keyring.parent.mkdir(parents=True, exist_ok=True)
        keyring.write_bytes(self("--export").stdout)

    def clearsign(self, path: Path) -> Path:
        signed = path.with_suffix(".sjson")
        self("--yes", "--clearsign", "--output", str(signed), str(path))
        return signed


@dataclass
class Signed:
    server: StreamsServer
    tree: Path
    vault: Vault
    key: Gpg
    other: Gpg

    def sign(self, by: Gpg | None = None) -> None:
        for rel in (INDEX, PRODUCTS):
            (by or self.key).clearsign(self.tree / rel)

    def resolve(self, reporter: Reporter) -> ImageInfo:
        async def no_tiny(_: Reporter) -> ImageInfo:
            raise AssertionError("not the tiny image")

        return run(
            resolve(
                "kettle",
                remotes={"signed": self.server.url},
                vault=self.vault,
                build_tiny=no_tiny,
                reporter=reporter,
            )
        )


@pytest.fixture
def signed(tmp_path: Path) -> Iterator[Signed]:
    disk = tmp_path / "kettle.img"
    disk.write_bytes(b"\0" * 65536)
    tree = tmp_path / "tree"
    publish(
        tree,
        [
            PublishedProduct(
                product="com.ketch:kettle:amd64",
                version="20261126",
                release="kettle",
                release_title="kettle",
                os="ketch",
                aliases=("kettle",),
                files=[PublishedFile(disk, "disk1.img")],
            )
        ],
    )
    vault = Vault(tmp_path / "vault")
    key = Gpg(tmp_path / "gnupg", "ketch test remote <remote@example.invalid>")
    other = Gpg(tmp_path / "gnupg-other", "someone else <else@example.invalid>")
    key.export(vault.keyring("signed"))
    with StreamsServer(tree) as server:
        yield Signed(server, tree, vault, key, other)


def test_a_signed_catalogue_is_verified_and_used(signed: Signed) -> None:
    signed.sign()
    cat = run(load_catalog("signed", signed.server.url, vault=signed.vault))
    assert cat.signed_by == signed.key.fingerprint
    assert signed.server.counts["/streams/v1/index.sjson"] == 1
    assert signed.server.counts["/" + PRODUCTS] == 0  # the unsigned twin is never read
    reporter = ListReporter()
    info = signed.resolve(reporter)
    assert Path(info.disk).read_bytes() == b"\0" * 65536
    assert not any("not signature-checked" in w for w in reporter.warnings)


def test_a_tampered_products_file_is_refused(signed: Signed) -> None:
    signed.sign()
    sjson = (signed.tree / PRODUCTS).with_suffix(".sjson")
    text = sjson.read_text()
    doc_start = text.index("{")
    sjson.write_text(text[:doc_start] + text[doc_start:].replace("kettle", "kett1e", 1))
    with pytest.raises(ImageError, match="no valid signature"):
        run(load_catalog("signed", signed.server.url, vault=signed.vault))
    assert not list((signed.vault.root / "catalogs").glob("*"))


def test_a_catalogue_signed_by_another_key_is_refused(signed: Signed) -> None:
    signed.sign(by=signed.other)
    with pytest.raises(ImageError, match="no valid signature from a key in"):
        run(load_catalog("signed", signed.server.url, vault=signed.vault))


def test_unsigned_text_around_the_signed_block_is_refused(signed: Signed) -> None:
    signed.sign()
    sjson = signed.tree / "streams/v1/index.sjson"
    sjson.write_bytes(b'{"index": {}}\n' + sjson.read_bytes())
    with pytest.raises(ImageError, match="not one OpenPGP clearsigned document"):
        run(load_catalog("signed", signed.server.url, vault=signed.vault))


def test_with_a_keyring_an_unsigned_remote_is_refused(signed: Signed) -> None:
    with pytest.raises(ImageError, match=r"index\.sjson: HTTP 404"):
        run(load_catalog("signed", signed.server.url, vault=signed.vault))


def test_without_a_keyring_the_catalogue_is_said_to_be_unsigned(signed: Signed) -> None:
    signed.vault.keyring("signed").unlink()
    reporter = ListReporter()
    signed.resolve(reporter)
    assert any("is not signature-checked" in w for w in reporter.warnings)
    assert run(load_catalog("signed", signed.server.url, vault=signed.vault)).signed_by == ""
    assert signed.server.counts["/streams/v1/index.sjson"] == 0
