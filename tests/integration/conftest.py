"""Fixtures for integration tests: a storage root with the tiny image, real VMs."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ketchcli import Ketch

from ketch.model import ImageInfo


def _seed_vault(root: Path, tiny: ImageInfo) -> None:
    """Put the session's built tiny image where the daemon looks, as hard links."""
    src = Path(tiny.disk).parent
    dst = root / "vault" / "built" / "tiny" / src.name
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


@pytest.fixture(scope="session")
def ketch(tiny_image: ImageInfo) -> Iterator[Ketch]:
    """One storage root (short path: Unix sockets live in it) and its daemon.

    Under xdist each worker is a session of its own, so each has its own root
    and ketchd; the root's name says whose (``ketch-it-gw0-...``).
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    prefix = f"ketch-it-{worker}-" if worker else "ketch-it-"
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    _seed_vault(root, tiny_image)
    k = Ketch(root)
    try:
        yield k
    finally:
        k.teardown()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def vm(ketch: Ketch) -> Iterator[str]:
    """A running tiny instance for the tests of one module."""
    with ketch.launched("vm", "--memory", "512M") as name:
        yield name


@pytest.fixture(scope="module")
def small_root(tiny_image: ImageInfo) -> Iterator[Ketch]:
    """A storage root on a 400 MiB tmpfs this fixture mounts, to fill it up."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    root = Path(tempfile.mkdtemp(prefix="ketch-full-", dir="/tmp"))
    # mode=0700: a tmpfs root is 1777, which ketchd refuses as a storage root.
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400M,mode=0700", "tmpfs", str(root)], check=True
    )
    k = Ketch(root)
    try:
        _seed_vault(root, tiny_image)  # a copy: hard links cannot cross filesystems
        k.run("set", "local.accel=tcg")
        yield k
    finally:
        (root / "filler").unlink(missing_ok=True)
        k.teardown()
        subprocess.run(["umount", "-l", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)
