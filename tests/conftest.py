"""Fixtures shared by every test directory, and the order tests run in under xdist."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ketch.model import ImageInfo

# The network rule: no test makes a bridge, TAP, dnsmasq or NAT in the machine's own
# network namespace.  Every ketchd a test starts inherits this default (user-mode
# networking); tests of the managed network set local.network=managed, inside a
# namespace they made (tests/integration/test_network.py).
os.environ["KETCH_NETWORK_DEFAULT"] = "user"

# scripts/test runs the suite on two workers (pytest-xdist, ``--dist loadfile
# --no-loadscope-reorder``).  Each worker is a session of its own (its own storage
# root and ketchd) and takes one group of tests at a time, in the order the workers
# collected them.  A group is a test file, so a file's module-scoped VM is booted
# once, by one worker; but each test named in ``ALONE`` is a group of its own (they
# are long and share no module-scoped fixture), so they spread over both workers.
# (xdist's ``loadgroup`` cannot do this here: with pytest 9.2 the ``@group`` it
# appends to a test's id no longer takes.)
ALONE = ("tests/integration/test_chaos.py::test_chaos_walk",)

# The modules that start a libvirtd of their own hold one lock while they run
# (tests/integration/libvirtd.py): on two workers, the second would wait for the first
# without doing anything.  So they are one group, run by one worker, one after another.
LIBVIRT = (
    "test_hosts.py",
    "test_libvirt_driver.py",
    "test_libvirt_launch.py",
    "test_libvirt_snapshots.py",
    "test_two_hosts.py",
)
LIBVIRT_GROUP = "tests/integration/<libvirt modules>"

# The longest files first, so that the two workers finish together rather than one
# waiting on the other's last long file (docs/benchmarks.md, "CI time", has what was
# measured; re-rank from a run's ``--durations=0`` when files grow); files not named
# here follow in collection order, integration tests before unit tests.
LONGEST_FIRST = (
    "test_chaos.py",
    "test_debian_image.py",
    "test_warm_debian.py",  # ~500 s: two debian-12 boots and a template under TCG
    LIBVIRT_GROUP,  # test_libvirt_launch.py alone ~400 s (each test through two URIs)
    "test_mounts_native.py",
    "test_reliability2.py",
    "test_lifecycle.py",
    "test_mounts.py",
    "test_network.py",
    "test_guest_access.py",
    "test_image_sources.py",
    "test_tiny_image.py",
    "test_snapshots.py",
    "test_reliability.py",
    "test_forwards.py",
    "test_operations.py",
    "test_cli_errors.py",
)


def _alone(nodeid: str) -> bool:
    return any(nodeid.startswith(prefix) for prefix in ALONE)


def _group(path: str) -> str:
    """The unit of work a test file belongs to: itself, or :data:`LIBVIRT_GROUP`."""
    in_libvirt = path.startswith("tests/integration/") and path.rsplit("/", 1)[-1] in LIBVIRT
    return LIBVIRT_GROUP if in_libvirt else path


def _rank(item: pytest.Item) -> tuple[int, int]:
    if _alone(item.nodeid):
        return (0, 0)
    path = _group(item.nodeid.split("::", 1)[0])
    name = path.rsplit("/", 1)[-1] if path != LIBVIRT_GROUP else path
    if name in LONGEST_FIRST:
        return (1, LONGEST_FIRST.index(name))
    return (2, 0) if path.startswith("tests/integration/") else (3, 0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker: the longest groups first (every worker sorts alike)."""
    if hasattr(config, "workerinput"):  # a plain run keeps pytest's order
        items.sort(key=_rank)  # stable: a file's tests keep their order


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` with the tests in ``ALONE`` each a file of their own, and the
    :data:`LIBVIRT` modules one group."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ByFile(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if _alone(nodeid) else _group(str(super()._split_scope(nodeid)))

    return ByFile(config, log)


@pytest.fixture(scope="session")
def tiny_image() -> ImageInfo:
    """The built-in tiny image, built once into a persistent cache.

    The cache is ``$KETCH_TEST_CACHE`` or ``~/.cache/ketch-test/images``; the
    image is rebuilt only when its packages or ketch's guest files change.
    Never modify the image's files: boot instances from qcow2 overlays.
    Under xdist every worker asks for it: the build takes an flock
    (``tiny/.lock`` in the cache), so one worker builds while the other waits and
    then finds the build made (and a valid build is read without the lock).
    """
    import asyncio
    import os
    from pathlib import Path

    from ketch.images.tiny import build_tiny

    cache = Path(os.environ.get("KETCH_TEST_CACHE") or "~/.cache/ketch-test/images").expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    return asyncio.run(build_tiny(cache))


@pytest.fixture
def short_tmp_path() -> Iterator[Path]:
    """A fresh directory directly under /tmp, removed afterwards, for Unix sockets:
    ``tmp_path`` is too deep for their 108-byte paths under xdist (it adds
    ``popen-gwN/``), and pytest's own numbering makes it deeper run by run."""
    path = Path(tempfile.mkdtemp(prefix="kt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
