"""What the built images share (ketch.images.built): manifest, verify, cache, lock, fallback.

A made-up image ``demo`` with two files stands in for tiny and debian-12, so
these rules are checked apart from either build.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
from pathlib import Path

import pytest

from ketch.errors import ImageError
from ketch.images.built import BuiltImage, file_sha256
from ketch.model import BootSpec, ImageInfo
from ketch.progress import ListReporter

FILES = ("disk.qcow2", "extra.bin")


def _load(image_dir: Path) -> ImageInfo:
    manifest = DEMO.read_manifest(image_dir)
    return ImageInfo(
        id=f"ketch:demo@{manifest['key']}",
        release="demo",
        disk=str(image_dir / "disk.qcow2"),
        disk_format="qcow2",
        boot=BootSpec(),
    )


DEMO = BuiltImage("demo", FILES, _load, lock_poll=0.01)


def make_build(base: Path, name: str, mtime: float = 1000.0) -> Path:
    d = base / name
    d.mkdir(parents=True)
    files = {}
    for f in FILES:
        data = f"{name}:{f}".encode()
        (d / f).write_bytes(data)
        files[f] = (hashlib.sha256(data).hexdigest(), len(data))
    manifest = {
        "key": name,
        "files": {f: digest for f, (digest, _) in files.items()},
        "sizes": {f: size for f, (_, size) in files.items()},
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    os.utime(d / "manifest.json", (mtime, mtime))
    return d


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * (3 << 20))
    assert file_sha256(path) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()


def test_verify_accepts_a_good_build(tmp_path: Path) -> None:
    d = make_build(tmp_path, "aaaa")
    DEMO.verify(d)
    info = DEMO.cached(d)
    assert info is not None and info.id == "ketch:demo@aaaa"


def test_verify_detects_a_changed_file(tmp_path: Path) -> None:
    d = make_build(tmp_path, "aaaa")
    (d / "extra.bin").write_bytes(b"aaaa:extra.biN")  # same size, other bytes
    with pytest.raises(ImageError, match=r"demo image file .*extra\.bin does not match"):
        DEMO.verify(d)
    assert DEMO.cached(d) is None


def test_verify_detects_a_changed_size(tmp_path: Path) -> None:
    d = make_build(tmp_path, "aaaa")
    (d / "disk.qcow2").write_bytes(b"longer than it was")
    with pytest.raises(ImageError, match="does not match"):
        DEMO.verify(d)


def test_verify_detects_a_missing_file(tmp_path: Path) -> None:
    d = make_build(tmp_path, "aaaa")
    (d / "disk.qcow2").unlink()
    with pytest.raises(ImageError, match=r"demo image file .*disk\.qcow2 is missing"):
        DEMO.verify(d)
    assert DEMO.cached(d) is None


def test_verify_wants_exactly_the_image_files(tmp_path: Path) -> None:
    d = make_build(tmp_path, "aaaa")
    m = json.loads((d / "manifest.json").read_text())
    del m["files"]["extra.bin"]
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ImageError, match=r"must list exactly disk\.qcow2, extra\.bin"):
        DEMO.verify(d)
    (d / "manifest.json").write_text(json.dumps({"key": "aaaa"}))
    with pytest.raises(ImageError, match="lists no files"):
        DEMO.verify(d)


def test_manifest_errors_name_the_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"no demo image in .*manifest\.json is missing"):
        DEMO.read_manifest(tmp_path)
    assert DEMO.cached(tmp_path) is None
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ImageError, match="is not a manifest"):
        DEMO.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ImageError, match="cannot read"):
        DEMO.read_manifest(tmp_path)


def test_image_dirs_newest_first_by_key(tmp_path: Path) -> None:
    make_build(tmp_path, "aaaa", mtime=1000.0)
    make_build(tmp_path, "aaaa-20261126T053000000000Z", mtime=3000.0)
    make_build(tmp_path, "bbbb", mtime=2000.0)
    make_build(tmp_path, "aaaab", mtime=4000.0)  # another key, though it starts alike
    (tmp_path / ".build-aaaa-x").mkdir()
    (tmp_path / "no-manifest").mkdir()
    names = [p.name for p in DEMO.image_dirs(tmp_path, None)]
    assert names == ["aaaab", "aaaa-20261126T053000000000Z", "bbbb", "aaaa"]
    names = [p.name for p in DEMO.image_dirs(tmp_path, "aaaa")]
    assert names == ["aaaa-20261126T053000000000Z", "aaaa"]
    assert DEMO.image_dirs(tmp_path / "absent", None) == []


def test_fall_back_picks_the_newest_valid_build_of_another_key(tmp_path: Path) -> None:
    make_build(tmp_path, "old", mtime=1000.0)
    make_build(tmp_path, "newer", mtime=2000.0)
    damaged = make_build(tmp_path, "newest", mtime=3000.0)
    (damaged / "disk.qcow2").write_bytes(b"damaged")
    make_build(tmp_path, "mine", mtime=4000.0)
    make_build(tmp_path, "mine-20261126T053000000000Z", mtime=5000.0)
    assert DEMO.newest_other(tmp_path, "mine") == tmp_path / "newer"

    reporter = ListReporter()
    failure = ImageError("apt-get download failed: offline")
    info = asyncio.run(DEMO.fall_back(tmp_path, "mine", failure, reporter, False))
    assert info.id == "ketch:demo@newer"
    assert reporter.warnings == [
        "cannot check for or build a newer demo image (apt-get download failed: offline);"
        " using newer"
    ]
    # Without a key (apt could not be asked), every build counts.
    info = asyncio.run(DEMO.fall_back(tmp_path, None, failure, ListReporter(), False))
    assert info.id == "ketch:demo@mine-20261126T053000000000Z"


def test_fall_back_raises_when_forced_or_nothing_valid(tmp_path: Path) -> None:
    make_build(tmp_path, "old")
    failure = ImageError("offline")
    reporter = ListReporter()
    with pytest.raises(ImageError, match="offline"):
        asyncio.run(DEMO.fall_back(tmp_path, "mine", failure, reporter, True))
    with pytest.raises(ImageError, match="offline"):
        asyncio.run(DEMO.fall_back(tmp_path, "old", failure, reporter, False))
    with pytest.raises(ImageError, match="offline"):
        asyncio.run(DEMO.fall_back(tmp_path / "absent", None, failure, reporter, False))
    assert reporter.warnings == []


def test_clean_leftovers(tmp_path: Path) -> None:
    make_build(tmp_path, "aaaa")
    (tmp_path / ".build-aaaa-x" / "work").mkdir(parents=True)
    (tmp_path / ".old-aaaa-1-2").mkdir()
    (tmp_path / ".lock").write_text("")
    DEMO.clean_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", ".old-aaaa-1-2", "aaaa"]

    removed: list[str] = []
    both = BuiltImage("demo", FILES, _load, leftovers=(".build-", ".old-"))
    (tmp_path / ".build-bbbb-y").mkdir()
    both.clean_leftovers(tmp_path, lambda p: removed.append(p.name))
    assert sorted(removed) == [".build-bbbb-y", ".old-aaaa-1-2"]


def test_the_lock_waits_and_says_so_once(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    reporter = ListReporter()
    order: list[str] = []

    async def main() -> None:
        # Held through another open file, as another ketch process would hold it.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:

            async def waiter() -> None:
                async with DEMO.locked(path, reporter):
                    order.append("waiter locked")

            task = asyncio.create_task(waiter())
            await asyncio.sleep(0.2)  # about 20 tries at lock_poll=0.01
            assert not task.done()
            order.append("holder unlocks")
        finally:
            os.close(fd)
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert order == ["holder unlocks", "waiter locked"]
    assert reporter.steps == ["Waiting for another build of the demo image"]


def test_the_lock_serialises_two_builds_in_one_process(tmp_path: Path) -> None:
    reporters = [ListReporter(), ListReporter()]
    inside: list[int] = []
    most = 0

    async def build(reporter: ListReporter) -> None:
        nonlocal most
        async with DEMO.locked(tmp_path / ".lock", reporter):
            inside.append(1)
            most = max(most, len(inside))
            await asyncio.sleep(0.05)
            inside.pop()

    async def both() -> None:
        await asyncio.gather(*(build(r) for r in reporters))

    asyncio.run(both())
    assert most == 1
    assert sorted(len(r.steps) for r in reporters) == [0, 1]


def test_the_lock_is_free_at_once_when_nobody_holds_it(tmp_path: Path) -> None:
    reporter = ListReporter()

    async def main() -> None:
        async with DEMO.locked(tmp_path / ".lock", reporter):
            pass

    asyncio.run(main())
    assert reporter.steps == []
    assert (tmp_path / ".lock").exists()


def test_a_child_build_sends_back_the_image_info_whole() -> None:
    from dataclasses import asdict

    from ketch.images.buildproc import info_from_json
    from ketch.model import BootSpec, ImageInfo

    info = ImageInfo(
        id="ketch:tiny@0123456789abcdef",
        release="ketch tiny 2026-12-01",
        disk="/v/disk.qcow2",
        disk_format="qcow2",
        boot=BootSpec(kernel="/v/vmlinuz", initrd="/v/initrd.img", cmdline="console=ttyS0"),
        aliases=("tiny",),
        remote="ketch",
        version="20261201",
    )
    assert info_from_json(json.loads(json.dumps(asdict(info)))) == info


def test_the_build_child_refuses_what_it_does_not_build(capsys: pytest.CaptureFixture[str]) -> None:
    from ketch.images import buildproc

    before = os.umask(0o077)
    try:
        assert buildproc.main(["ubuntu", "/tmp"]) == 2
        assert os.umask(before) == buildproc.BUILD_UMASK  # the child's first act
    finally:
        os.umask(before)
    assert "usage" in capsys.readouterr().err
