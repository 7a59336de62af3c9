"""Image sources against a real HTTP server on 127.0.0.1: aliases, the vault, faults."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from streams_server import StreamsServer

import ketch
from ketch.errors import DigestMismatch, ImageError, InvalidArgument, NotFound
from ketch.images.catalog import find, load_catalog
from ketch.images.publish import PublishedFile, PublishedProduct, from_disk, publish
from ketch.images.resolve import disk_format, resolve
from ketch.images.vault import Vault
from ketch.model import BootSpec, ImageInfo
from ketch.progress import ListReporter, Reporter

T = TypeVar("T")
NOBLE = "com.ubuntu.cloud:server:24.04:amd64"
JAMMY = "com.ubuntu.cloud:server:22.04:amd64"
KETTLE = "com.ketch:kettle:amd64"
DEADLINE = 120  # a safety net against hangs, never a performance check


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, DEADLINE))


def qcow2(path: Path, size: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Remote:
    server: StreamsServer
    tree: Path
    disks: dict[str, Path]  # "noble-old", "noble", "jammy", "kettle"

    @property
    def remotes(self) -> dict[str, str]:
        return {"release": self.server.url}

    def served(self, name: str) -> str:
        """URL path of a published disk."""
        products = json.loads((self.tree / "streams/v1/com.ketch.images:download.json").read_text())
        product, version = {
            "noble-old": (NOBLE, "20260101"),
            "noble": (NOBLE, "20261101"),
            "jammy": (JAMMY, "20261020"),
            "kettle": (KETTLE, "20261126"),
        }[name]
        item = products["products"][product]["versions"][version]["items"]["disk1.img"]
        return "/" + str(item["path"])


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    src = tmp_path / "src"
    src.mkdir()
    disks = {
        "noble-old": qcow2(src / "noble-old.img", "16M"),
        "noble": qcow2(src / "noble.img", "32M"),
        "jammy": qcow2(src / "jammy.img", "48M"),
        "kettle": qcow2(src / "kettle.qcow2", "8M"),
    }
    (src / "vmlinuz").write_bytes(b"kernel" * 100)
    (src / "initrd.img").write_bytes(b"initrd" * 100)
    tree = tmp_path / "tree"

    def noble(disk: Path, version: str) -> PublishedProduct:
        aliases = ("24.04", "default", "lts", "n", "noble")
        return from_disk(
            disk,
            product=NOBLE,
            version=version,
            release="noble",
            release_title="24.04 LTS",
            aliases=aliases,
        )

    publish(tree, [noble(disks["noble-old"], "20260101")])
    publish(
        tree,
        [
            noble(disks["noble"], "20261101"),
            from_disk(
                disks["jammy"],
                product=JAMMY,
                version="20261020",
                release="jammy",
                release_title="22.04 LTS",
                aliases=("22.04", "j", "jammy"),
            ),
            PublishedProduct(
                product=KETTLE,
                version="20261126",
                release="kettle",
                release_title="kettle 2026-11-26",
                os="ketch",
                aliases=("kettle",),
                kernel_cmdline="console=ttyS0 root=/dev/vda",
                files=[
                    PublishedFile(disks["kettle"], "disk1.img"),
                    PublishedFile(src / "vmlinuz", "boot-kernel"),
                    PublishedFile(src / "initrd.img", "boot-initrd"),
                ],
            ),
        ],
    )
    with StreamsServer(tree) as server:
        yield Remote(server, tree, disks)


async def _no_tiny(reporter: Reporter) -> ImageInfo:
    raise AssertionError("build_tiny must not be called")


def resolve_sync(ref: str, remote: Remote, vault: Vault, reporter: ListReporter) -> ImageInfo:
    return run(
        resolve(ref, remotes=remote.remotes, vault=vault, build_tiny=_no_tiny, reporter=reporter)
    )


def assert_clean(vault: Vault) -> None:
    """Nothing verified-looking or half-written is left behind."""
    assert not list((vault.root / "sha256").glob("*"))
    assert not list((vault.root / "tmp").glob("*"))


# -- aliases ---------------------------------------------------------------


def test_alias_resolves_to_newest_version(remote: Remote, tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    info = resolve_sync("noble", remote, vault, ListReporter())
    assert info.version == "20261101"
    assert info.release == "Ubuntu 24.04 LTS"
    assert info.remote == "release"
    assert info.disk_format == "qcow2"
    assert info.boot == BootSpec(firmware="bios")
    assert "lts" in info.aliases
    assert Path(info.disk) == vault.path_for(sha(remote.disks["noble"]))
    assert sha(Path(info.disk)) == sha(remote.disks["noble"])
    assert remote.server.counts[remote.served("noble-old")] == 0


@pytest.mark.parametrize(
    "ref", ["noble", "release:24.04", "lts", "release:noble", f"release:{NOBLE}"]
)
def test_aliases_name_the_same_image(remote: Remote, tmp_path: Path, ref: str) -> None:
    info = resolve_sync(ref, remote, Vault(tmp_path / "vault"), ListReporter())
    assert info.id == f"release:{NOBLE}@20261101"


def test_other_release(remote: Remote, tmp_path: Path) -> None:
    info = resolve_sync("release:jammy", remote, Vault(tmp_path / "vault"), ListReporter())
    assert (info.release, info.version) == ("Ubuntu 22.04 LTS", "20261020")


def test_kernel_carrying_image_boots_directly(remote: Remote, tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    info = resolve_sync("kettle", remote, vault, ListReporter())
    assert info.boot.cmdline == "console=ttyS0 root=/dev/vda"
    assert info.boot.kernel is not None and info.boot.initrd is not None
    assert Path(info.boot.kernel).read_bytes() == b"kernel" * 100
    assert Path(info.boot.initrd).read_bytes() == b"initrd" * 100
    owners = {e.digest: e.owners for e in vault.list()}
    assert owners[Path(info.boot.kernel).name] == (info.id,)


def test_tiny_is_built_not_downloaded(remote: Remote, tmp_path: Path) -> None:
    built = ImageInfo("ketch:tiny@1", "ketch tiny", "/x.qcow2", "qcow2", BootSpec())
    calls: list[Reporter] = []

    async def build_tiny(reporter: Reporter) -> ImageInfo:
        calls.append(reporter)
        return built

    vault = Vault(tmp_path / "vault")
    for ref in ("tiny", "ketch:tiny"):
        got = run(
            resolve(
                ref,
                remotes=remote.remotes,
                vault=vault,
                build_tiny=build_tiny,
                reporter=ListReporter(),
            )
        )
        assert got is built
    assert len(calls) == 2
    assert sum(remote.server.counts.values()) == 0
    with pytest.raises(NotFound, match='no image "noble" on remote "ketch"') as err:
        resolve_sync("ketch:noble", remote, vault, ListReporter())
    assert err.value.hint is not None and "tiny" in err.value.hint


def test_unknown_alias_lists_what_find_shows(remote: Remote, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as err:
        resolve_sync("plucky", remote, Vault(tmp_path / "vault"), ListReporter())
    assert 'no image "plucky" on remote "release"' in err.value.message
    assert err.value.hint is not None
    assert "noble" in err.value.hint and "jammy" in err.value.hint and "tiny" in err.value.hint


def test_unknown_remote(remote: Remote, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match='remote "bogus" is not known') as err:
        resolve_sync("bogus:noble", remote, Vault(tmp_path / "vault"), ListReporter())
    assert err.value.hint is not None and "release" in err.value.hint


@pytest.mark.parametrize(
    ("ref", "error", "words"),
    [
        ("", InvalidArgument, "no image"),
        ("ftp://host/x.img", InvalidArgument, 'unsupported URL scheme "ftp"'),
        ("http:///x.img", InvalidArgument, "no host"),
        ("https://example.invalid/", InvalidArgument, "does not name a file"),
        ("file://server/x.qcow2", InvalidArgument, "cannot name a host"),
        ("file:relative.qcow2", InvalidArgument, "no absolute path"),
        ("./x.qcow2", InvalidArgument, "neither an image alias nor a URL"),
        (":noble", InvalidArgument, "neither an image alias nor a URL"),
        ("file:///no/such/file.qcow2", NotFound, "does not exist"),
    ],
)
def test_bad_references(
    remote: Remote, tmp_path: Path, ref: str, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        resolve_sync(ref, remote, Vault(tmp_path / "vault"), ListReporter())
    assert sum(remote.server.counts.values()) == 0


# -- the vault under faults --------------------------------------------------


def test_digest_mismatch_discards_the_download(remote: Remote, tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    remote.server.corrupt.add(remote.served("noble"))
    with pytest.raises(DigestMismatch) as err:
        resolve_sync("noble", remote, vault, ListReporter())
    assert err.value.expected == sha(remote.disks["noble"])
    assert err.value.actual != err.value.expected
    assert err.value.expected in err.value.message and err.value.actual in err.value.message
    assert_clean(vault)


def test_connection_closed_mid_transfer(remote: Remote, tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    path = remote.served("noble")
    remote.server.truncate[path] = 4096
    with pytest.raises(ImageError) as err:
        resolve_sync("noble", remote, vault, ListReporter())
    assert remote.server.url.rstrip("/") + path in err.value.message
    total = remote.disks["noble"].stat().st_size
    assert f"of {total} bytes" in err.value.message  # what arrived before the close
    assert_clean(vault)
    del remote.server.truncate[path]  # the next attempt succeeds from scratch
    info = resolve_sync("noble", remote, vault, ListReporter())
    assert sha(Path(info.disk)) == sha(remote.disks["noble"])


def test_concurrent_resolves_download_once(remote: Remote, tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    path = remote.served("noble")
    gate = remote.server.gates[path] = threading.Event()

    class Signalling(ListReporter):
        def __init__(self, waiting: asyncio.Event) -> None:
            super().__init__()
            self.waiting = waiting

        def step(self, message: str) -> None:
            super().step(message)
            if message.startswith("Waiting for another download"):
                self.waiting.set()

    async def both() -> tuple[ImageInfo, ImageInfo]:
        waiting = asyncio.Event()

        def go(reporter: ListReporter) -> asyncio.Task[ImageInfo]:
            coro = resolve(
                "noble",
                remotes=remote.remotes,
                vault=vault,
                build_tiny=_no_tiny,
                reporter=reporter,
            )
            return asyncio.create_task(coro)

        a, b = go(Signalling(waiting)), go(Signalling(waiting))
        await asyncio.to_thread(remote.server.wait_for_request, path)
        await waiting.wait()  # the second resolve queues behind the first download
        gate.set()
        return await a, await b

    a, b = run(both())
    assert a == b
    assert remote.server.counts[path] == 1


def test_cancelled_download_leaves_nothing(remote: Remote, tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    path = remote.served("noble")
    remote.server.gates[path] = threading.Event()

    async def cancel() -> None:
        coro = resolve(
            "noble",
            remotes=remote.remotes,
            vault=vault,
            build_tiny=_no_tiny,
            reporter=ListReporter(),
        )
        task = asyncio.create_task(coro)
        await asyncio.to_thread(remote.server.wait_for_request, path)
        assert list((vault.root / "tmp").glob("*.part"))  # the download had begun
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancel())
    remote.server.gates[path].set()
    assert_clean(vault)


def test_two_processes_download_once(remote: Remote, tmp_path: Path) -> None:
    url = remote.server.url.rstrip("/") + remote.served("noble")
    digest = sha(remote.disks["noble"])
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from ketch.images.vault import Vault

        class Out:
            def step(self, m): print("step", m, flush=True)
            def progress(self, label, done, total): pass
            def warn(self, m): print("warn", m, flush=True)

        path = asyncio.run(Vault(Path({str(tmp_path / "vault")!r})).fetch(
            {url!r}, sha256={digest!r}, size=None, reporter=Out(), what="noble disk"))
        print("done", path, flush=True)
        """
    )
    src = str(Path(ketch.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    gate = remote.server.gates[remote.served("noble")] = threading.Event()

    def start() -> subprocess.Popen[str]:
        argv = [sys.executable, "-c", script]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)

    a = start()
    try:
        remote.server.wait_for_request(remote.served("noble"))
        b = start()
        try:
            assert b.stdout is not None
            line = b.stdout.readline()
            assert line.startswith("step Waiting for another download"), line
            gate.set()
            out_b, _ = b.communicate(timeout=DEADLINE)
        finally:
            b.kill()
        out_a, _ = a.communicate(timeout=DEADLINE)
    finally:
        a.kill()
    assert a.returncode == 0 and b.returncode == 0
    blob = str(tmp_path / "vault" / "sha256" / digest)
    assert f"done {blob}" in out_a and f"done {blob}" in out_b
    assert remote.server.counts[remote.served("noble")] == 1


def test_offline_falls_back_to_cached_copy(remote: Remote, tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    online = resolve_sync("noble", remote, vault, ListReporter())
    remote.server.stop()
    for ref in ("noble", "lts", "release:24.04"):
        reporter = ListReporter()
        offline = resolve_sync(ref, remote, vault, reporter)
        assert offline == online
        assert len(reporter.warnings) == 1
        assert "unreachable" in reporter.warnings[0] and "cached" in reporter.warnings[0]


def test_offline_without_cache_is_a_clear_error(remote: Remote, tmp_path: Path) -> None:
    remote.server.stop()
    with pytest.raises(ImageError, match=r'cannot resolve "release:noble".*unreachable') as err:
        resolve_sync("noble", remote, Vault(tmp_path / "vault"), ListReporter())
    assert err.value.hint is not None and "cached" in err.value.hint


# -- plain URLs ----------------------------------------------------------------


def test_file_url_is_copied_into_the_vault(tmp_path: Path, remote: Remote) -> None:
    disk = qcow2(tmp_path / "my image.qcow2", "24M")
    vault = Vault(tmp_path / "vault")
    reporter = ListReporter()
    info = resolve_sync(disk.resolve().as_uri(), remote, vault, reporter)
    assert Path(info.disk) == vault.path_for(sha(disk))
    assert info.id == f"sha256:{sha(disk)}"
    assert (info.disk_format, info.release) == ("qcow2", "my image.qcow2")
    assert reporter.warnings == []
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 65536)
    assert resolve_sync(raw.as_uri(), remote, vault, reporter).disk_format == "raw"


def test_http_url_without_digest(remote: Remote, tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    url = remote.server.url.rstrip("/") + remote.served("jammy")
    reporter = ListReporter()
    info = resolve_sync(url, remote, vault, reporter)
    assert any("cannot be verified" in w for w in reporter.warnings)
    assert info.id == f"sha256:{sha(remote.disks['jammy'])}"
    again = resolve_sync(url, remote, vault, ListReporter())  # conditional request: 304
    assert again == info
    remote.server.stop()
    reporter = ListReporter()
    assert resolve_sync(url, remote, vault, reporter) == info
    assert any("cached earlier" in w for w in reporter.warnings)


def test_disk_format_refuses_compressed_and_backed_images(tmp_path: Path) -> None:
    base = qcow2(tmp_path / "base.qcow2", "8M")
    top = tmp_path / "top.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top)],
        check=True,
    )
    with pytest.raises(ImageError, match="refers to other files"):
        disk_format(top, "top.qcow2")
    gz = tmp_path / "x.img.gz"
    gz.write_bytes(b"\x1f\x8b" + b"\0" * 200)
    with pytest.raises(ImageError, match="gzip-compressed"):
        disk_format(gz, "x.img.gz")


# -- find, list, prune -----------------------------------------------------------


def test_find_lists_remotes_and_reports_unreachable_ones(remote: Remote, tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    remotes = {**remote.remotes, "daily": "http://127.0.0.1:9/"}  # nothing listens on 9
    rows = run(find(None, remotes=remotes, vault=vault, tiny_info=None))
    by_remote = {(r.remote, r.aliases[0] if r.aliases else None) for r in rows}
    assert ("ketch", "tiny") in by_remote
    assert ("release", "24.04") in by_remote and ("release", "22.04") in by_remote
    errors = [r for r in rows if r.error]
    assert [r.remote for r in errors] == ["daily"] and "unreachable" in (errors[0].error or "")
    noble = run(find("noble", remotes=remote.remotes, vault=vault, tiny_info=None))
    assert [(r.remote, r.release, r.version) for r in noble] == [
        ("release", "24.04 LTS", "20261101")
    ]
    only = run(find("release:", remotes=remote.remotes, vault=vault, tiny_info=None))
    assert {r.remote for r in only} == {"release"} and len(only) == 3
    with pytest.raises(NotFound):
        run(find("nowhere:x", remotes=remote.remotes, vault=vault, tiny_info=None))


def test_catalogue_is_refetched_conditionally(remote: Remote, tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    first = run(load_catalog("release", remote.server.url, vault=vault))
    second = run(load_catalog("release", remote.server.url, vault=vault))
    assert first == second
    assert vault.load_catalog(remote.server.url + "streams/v1/com.ketch.images:download.json")


def test_list_and_prune(remote: Remote, tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault")
    noble = resolve_sync("noble", remote, vault, ListReporter())
    jammy = resolve_sync("jammy", remote, vault, ListReporter())
    entries = {e.digest: e for e in vault.list()}
    noble_entry = entries[Path(noble.disk).name]
    assert noble_entry.owners == (noble.id,)
    assert noble_entry.source.endswith(remote.served("noble"))
    assert noble_entry.size == remote.disks["noble"].stat().st_size
    assert vault.prune(1, set()) == []  # used just now
    removed = vault.prune(0, {noble.id}, now=time.time() + 3600)
    assert [e.digest for e in removed] == [Path(jammy.disk).name]
    assert not Path(jammy.disk).exists() and Path(noble.disk).exists()
    assert vault.recall("release:jammy") == [] and vault.recall("release:noble") != []
