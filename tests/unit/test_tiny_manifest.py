"""The pure parts of the tiny image build: versions, key, manifest, ELF, cpio."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from ketch.errors import HostCommandError, ImageError
from ketch.images import tiny
from ketch.images.publish import from_image_dir
from ketch.images.tiny import build as tiny_build
from ketch.progress import ListReporter

POLICY = """\
linux-image-cloud-amd64:
  Installed: (none)
  Candidate: 6.1.192-2
  Version table:
     6.1.192-2 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
     6.1.176-1 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
busybox-static:
  Installed: 1:1.35.0-4+b3
  Candidate: 1:1.35.0-4+deb12u1+b1
  Version table:
 *** 1:1.35.0-4+b3 100
        100 /var/lib/dpkg/status
gone:
  Installed: (none)
  Candidate: (none)
  Version table:
"""


def test_parse_policy() -> None:
    assert tiny.parse_policy(POLICY) == {
        "linux-image-cloud-amd64": "6.1.192-2",
        "busybox-static": "1:1.35.0-4+deb12u1+b1",
        "gone": None,
    }


def test_cache_key_is_stable_and_sensitive() -> None:
    versions = {"a": "1", "b": "2"}
    key = tiny.cache_key(versions, "g")
    assert key == tiny.cache_key({"b": "2", "a": "1"}, "g")
    assert len(key) == 16 and all(c in "0123456789abcdef" for c in key)
    assert tiny.cache_key({"a": "1", "b": "3"}, "g") != key
    assert tiny.cache_key({"a": "1", "b": "2", "c": "0"}, "g") != key
    assert tiny.cache_key(versions, "h") != key


def test_guest_digest_follows_guest_files_and_recipe(tmp_path: Path) -> None:
    guest = tmp_path / "guest"
    shutil.copytree(tiny.GUEST_DIR, guest)
    base = tiny.guest_digest(guest, b"recipe")
    assert base == tiny.guest_digest(guest, b"recipe")
    assert tiny.guest_digest(guest, b"other recipe") != base
    (guest / "rcS").write_text((guest / "rcS").read_text() + "# changed\n")
    assert tiny.guest_digest(guest, b"recipe") != base
    assert tiny.guest_digest() == tiny.guest_digest(tiny.GUEST_DIR)


def test_every_guest_file_is_installed() -> None:
    shipped = {p.name for p in tiny.GUEST_DIR.iterdir() if p.is_file()}
    mapped = [gf.name for gf in tiny.GUEST_FILES]
    assert len(mapped) == len(set(mapped))
    assert shipped == set(mapped)
    assert len({gf.dest for gf in tiny.GUEST_FILES}) == len(mapped)


def fake_image(directory: Path, *, built: datetime.datetime | None = None) -> dict[str, Any]:
    directory.mkdir(parents=True)
    files = {}
    for name in tiny.IMAGE_FILES:
        data = f"contents of {name}".encode()
        (directory / name).write_bytes(data)
        files[name] = (hashlib.sha256(data).hexdigest(), len(data))
    manifest = tiny.make_manifest(
        key="0123456789abcdef",
        packages={"busybox-static": "1:1.35", "linux-image-6.1.0-56-cloud-amd64": "6.1.192-2"},
        files=files,
        kernel_version="6.1.0-56-cloud-amd64",
        guest="g" * 64,
        built=built or datetime.datetime(2026, 11, 26, 5, 30, tzinfo=datetime.UTC),
    )
    (directory / tiny.MANIFEST).write_text(json.dumps(manifest))
    return manifest


def test_manifest_fields(tmp_path: Path) -> None:
    manifest = fake_image(tmp_path / "img")
    assert manifest["built"] == "2026-11-26T05:30:00Z"
    assert manifest["version"] == "20261126"
    assert manifest["key"] == manifest["build"] == "0123456789abcdef"
    assert manifest["kernel_cmdline"] == tiny.CMDLINE
    assert manifest["disk_format"] == "qcow2"
    assert set(manifest["files"]) == set(tiny.IMAGE_FILES)
    assert manifest["packages"] == {
        "busybox-static": "1:1.35",
        "linux-image-6.1.0-56-cloud-amd64": "6.1.192-2",
    }


def test_load_tiny(tmp_path: Path) -> None:
    fake_image(tmp_path / "img")
    info = tiny.load_tiny(tmp_path / "img")
    root = (tmp_path / "img").resolve()
    assert info.id == "ketch:tiny@0123456789abcdef"
    assert info.release == "ketch tiny 2026-11-26"
    assert info.version == "20261126"
    assert info.disk == str(root / "disk.qcow2")
    assert info.disk_format == "qcow2"
    assert info.boot.kernel == str(root / "vmlinuz")
    assert info.boot.initrd == str(root / "initrd.img")
    assert info.boot.cmdline == tiny.CMDLINE
    assert info.aliases == ("tiny",)
    tiny.verify_tiny(tmp_path / "img")


def test_a_forced_rebuild_has_its_own_id(tmp_path: Path) -> None:
    manifest = fake_image(tmp_path / "img")
    manifest["build"] = "0123456789abcdef-20261126T053000000000Z"
    (tmp_path / "img" / tiny.MANIFEST).write_text(json.dumps(manifest))
    info = tiny.load_tiny(tmp_path / "img")
    assert info.id == "ketch:tiny@0123456789abcdef-20261126T053000000000Z"


def test_load_tiny_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError):
        tiny.load_tiny(tmp_path / "nothing")
    fake_image(tmp_path / "img")
    (tmp_path / "img" / "initrd.img").unlink()
    with pytest.raises(ImageError, match=r"initrd\.img"):
        tiny.load_tiny(tmp_path / "img")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / tiny.MANIFEST).write_text('{"format": 1, "name": "tiny"}')
    with pytest.raises(ImageError, match="malformed"):
        tiny.load_tiny(tmp_path / "bad")
    (tmp_path / "bad" / tiny.MANIFEST).write_text("not json")
    with pytest.raises(ImageError):
        tiny.load_tiny(tmp_path / "bad")


def test_verify_tiny_detects_corruption(tmp_path: Path) -> None:
    fake_image(tmp_path / "img")
    disk = tmp_path / "img" / "disk.qcow2"
    data = bytearray(disk.read_bytes())
    data[0] ^= 1
    disk.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"disk\.qcow2"):
        tiny.verify_tiny(tmp_path / "img")


def test_manifest_is_publishable(tmp_path: Path) -> None:
    fake_image(tmp_path / "img")
    product = from_image_dir(tmp_path / "img")
    assert product.version == "20261126"
    assert product.kernel_cmdline == tiny.CMDLINE
    assert {f.source.name for f in product.files} == set(tiny.IMAGE_FILES)


def test_modules_dep_and_closure() -> None:
    deps = tiny.parse_modules_dep(
        "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko "
        "kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio.ko:\n"
        "kernel/drivers/virtio/virtio_ring.ko:\n"
        "kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko\n"
    )
    assert tiny.module_name("kernel/drivers/char/hw_random/virtio-rng.ko") == "virtio_rng"
    assert tiny.module_closure(["virtio_blk", "virtio_rng"], deps) == {
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/char/hw_random/virtio-rng.ko",
    }
    with pytest.raises(ImageError):
        tiny.module_closure(["nope"], deps)


def test_elf_deps_of_the_python_binary() -> None:
    data = Path(sys.executable).resolve().read_bytes()
    deps = tiny.elf_deps(data)
    assert deps is not None
    assert deps.interp is not None and deps.interp.startswith("/lib")
    assert "libc.so.6" in deps.needed
    assert tiny.elf_deps(b"#!/bin/sh\n") is None


def parse_cpio(data: bytes) -> dict[str, tuple[int, int, int, bytes, tuple[int, int]]]:
    """{name: (mode, uid, gid, data, rdev)} of a newc archive."""
    out: dict[str, tuple[int, int, int, bytes, tuple[int, int]]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos : pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (f[1], f[2], f[3], body, (f[9], f[10]))


def test_write_cpio(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "busybox").write_bytes(b"\x7fELF...")
    (tmp_path / "bin" / "busybox").chmod(0o755)
    (tmp_path / "bin" / "sh").symlink_to("busybox")
    (tmp_path / "init").write_text("#!/bin/sh\n")
    archive = tiny.write_cpio(tmp_path, devices=[("dev/console", stat.S_IFCHR | 0o600, 5, 1)])
    entries = parse_cpio(archive)
    names = list(entries)
    assert sorted(names) == ["bin", "bin/busybox", "bin/sh", "dev/console", "init"]
    assert names.index("bin") < names.index("bin/busybox")
    mode, uid, gid, body, _ = entries["bin/busybox"]
    assert (stat.S_ISREG(mode), stat.S_IMODE(mode), uid, gid, body) == (
        True,
        0o755,
        0,
        0,
        b"\x7fELF...",
    )
    assert stat.S_ISLNK(entries["bin/sh"][0]) and entries["bin/sh"][3] == b"busybox"
    assert stat.S_ISDIR(entries["bin"][0])
    console = entries["dev/console"]
    assert stat.S_ISCHR(console[0]) and console[4] == (5, 1)
    assert len(archive) % 4 == 0


def test_offline_falls_back_to_an_earlier_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_apt() -> dict[str, str]:
        raise HostCommandError(["apt-cache", "policy"], None, "No such file or directory")

    monkeypatch.setattr(tiny_build, "candidate_versions", no_apt)
    with pytest.raises(HostCommandError):
        asyncio.run(tiny.build_tiny(tmp_path))
    fake_image(tmp_path / "tiny" / "0123456789abcdef")
    reporter = ListReporter()
    info = asyncio.run(tiny.build_tiny(tmp_path, reporter))
    assert info.id == "ketch:tiny@0123456789abcdef"
    assert len(reporter.warnings) == 1 and "0123456789abcdef" in reporter.warnings[0]
    with pytest.raises(HostCommandError):
        asyncio.run(tiny.build_tiny(tmp_path, force=True))


def test_kernel_dependency() -> None:
    show = (
        "Package: linux-image-cloud-amd64\n"
        "Version: 6.1.192-2\n"
        "Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n"
        "Description: Linux for x86-64 cloud (meta-package)\n"
    )
    assert tiny.kernel_dependency(show) == ("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2")
    unpinned = "Depends: initramfs-tools, linux-image-6.1.0-9-cloud-amd64\n"
    assert tiny.kernel_dependency(unpinned) == ("linux-image-6.1.0-9-cloud-amd64", None)
    assert tiny.kernel_dependency("Depends: libc6\n") is None
