"""Native (virtiofs) mounts on the debian-12 image (Debian's own kernel), not only on tiny.

One debian-12 instance (booted under TCG: about a minute or more) gets a
native mount through the verb while stopped (``ketch mount -t native``); the
next ``start`` attaches virtiofsd and mounts it in the guest: the host's file
is read, a guest write lands on the host with the guest's uid, ``..`` reaches
nothing outside the share, and ``info`` shows it active with no inconsistency.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ketchcli import Ketch

from ketch.images import debian

pytestmark = [
    pytest.mark.vm,
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("qemu-system-x86_64", "qemu-img", "ssh", "debootstrap")),
        reason="needs QEMU, OpenSSH and debootstrap (the debian-12 image)",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="the image and virtiofsd need root"),
    pytest.mark.skipif(not Path("/usr/lib/qemu/virtiofsd").exists(), reason="no virtiofsd"),
]

TARGET = "/mnt/host"
SECRET = "ketch-debian-outside-the-share-41c9"
READY_TIMEOUT = "1200"  # seconds; a bound against hangs under TCG, not a performance target


def _cache() -> Path:
    return Path(os.environ.get("KETCH_TEST_CACHE") or "~/.cache/ketch-test/images").expanduser()


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@pytest.fixture(scope="module")
def tree() -> Iterator[Path]:
    top = Path(tempfile.mkdtemp(prefix="ketch-dvfs-", dir="/tmp"))
    (top / "secret").write_text(SECRET + "\n")
    share = top / "share"
    share.mkdir()
    share.chmod(0o777)  # the guest's user writes here (virtiofsd maps no ids)
    (share / "hello.txt").write_text("from the host\n")
    (share / "up").symlink_to("..")
    try:
        yield share
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def dvm(ketch: Ketch, tree: Path) -> Iterator[str]:
    """A debian-12 instance with a native mount of ``tree``, started (so mounted)."""
    image = asyncio.run(debian.build_debian(_cache()))  # cached: built once per machine
    src = Path(image.disk).parent
    dst = ketch.root / "vault" / "built" / debian.NAME / src.name
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, copy_function=_link)
    with ketch.launched(
        "debvfs", "--memory", "768M", "--timeout", READY_TIMEOUT,
        image=debian.NAME, timeout=float(READY_TIMEOUT) + 600,
    ) as name:  # fmt: skip
        ketch.run("stop", name, timeout=600)
        ketch.run("mount", "-t", "native", str(tree), f"{name}:{TARGET}")
        ketch.run("start", name, "--timeout", READY_TIMEOUT, timeout=float(READY_TIMEOUT) + 60)
        yield name


def test_a_native_mount_works_on_debian(ketch: Ketch, dvm: str, tree: Path) -> None:
    assert f" {TARGET} virtiofs " in ketch.exec(dvm, "cat", "/proc/mounts")
    assert ketch.exec(dvm, "cat", f"{TARGET}/hello.txt") == "from the host\n"
    ketch.exec(dvm, "sh", "-c", f"echo from debian > {TARGET}/guest.txt")
    written = tree / "guest.txt"
    assert written.read_text() == "from debian\n"
    assert written.stat().st_uid == int(ketch.exec(dvm, "id", "-u"))
    probe = f"cat {TARGET}/../secret {TARGET}/up/secret; grep -rs {SECRET} {TARGET}/up/; true"
    seen = ketch.run("exec", dvm, "--", "sudo", "sh", "-c", probe, check=False)
    assert SECRET not in seen.stdout + seen.stderr
    info = ketch.info(dvm)
    assert info["mounts"][TARGET]["type"] == "native"
    assert info["mounts"][TARGET]["active"] is True
    assert [i for i in info["inconsistencies"] if i["code"].startswith("mount-")] == []
