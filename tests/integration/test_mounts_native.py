"""Native (virtiofs) mounts on real VMs (tiny image, QEMU/TCG, the real virtiofsd).

The mount verbs live elsewhere: these tests put a native MountSpec into the
instance's spec through the store (the instance stopped), start it, and mount
in the guest through :mod:`ketch.service.mounts_native`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fakes import FakeImages
from ketchcli import Ketch

from ketch.host import procs
from ketch.layout import Root
from ketch.model import MountSpec, MountType
from ketch.progress import ListReporter
from ketch.runtime.qemu_driver import QemuDriver
from ketch.service import mounts_native
from ketch.service.context import Context
from ketch.store.db import Store

pytestmark = pytest.mark.vm

TARGET = "/mnt/host"
SECRET = "ketch-outside-the-share-7f3a"


def virtiofsds(root: Path) -> list[int]:
    """Pids of every virtiofsd serving a socket under this storage root."""
    want = f"KETCH_VIRTIOFS_SOCKET={root}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        argv = procs.cmdline(int(entry.name)) if entry.name.isdigit() else None
        if argv and Path(argv[0]).name == "virtiofsd":
            with contextlib.suppress(OSError):
                environ = (entry / "environ").read_bytes().split(b"\0")
                if any(var.startswith(want) for var in environ):
                    found.append(int(entry.name))
    return found


def parent(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def context(ketch: Ketch) -> Iterator[Context]:
    """A use-case context on the test's root; its store is closed afterwards (a connection
    left open in this process would keep reading an old snapshot of the daemon's WAL)."""
    root = Root(ketch.root)
    store = Store(root.database)
    try:
        yield Context(root=root, store=store, driver=QemuDriver(), images=FakeImages())
    finally:
        store.close()


def activate(ketch: Ketch, name: str) -> None:
    with context(ketch) as ctx:
        spec = ctx.store.get(name).spec
        asyncio.run(mounts_native.activate(ctx, spec, spec.mounts[0], ListReporter()))


def is_active(ketch: Ketch, name: str) -> bool | None:
    with context(ketch) as ctx:
        spec = ctx.store.get(name).spec
        return asyncio.run(mounts_native.active(ctx, spec, spec.mounts[0]))


def set_mount(ketch: Ketch, name: str, source: Path) -> None:
    store = Store(Root(ketch.root).database)
    try:
        spec = store.get(name).spec
        mount = MountSpec(source=str(source), target=TARGET, type=MountType.NATIVE)
        store.set_spec(replace(spec, mounts=(mount,)))
    finally:
        store.close()


@pytest.fixture(scope="module")
def tree() -> Iterator[Path]:
    """outside/secret (never to be seen by the guest) and share/ (the mount's SOURCE)."""
    top = Path(tempfile.mkdtemp(prefix="ketch-vfs-", dir="/tmp"))
    (top / "secret").write_text(SECRET + "\n")
    share = top / "share"
    share.mkdir()
    share.chmod(0o777)  # the guest's user writes here (virtiofsd maps no ids)
    (share / "hello.txt").write_text("from the host\n")
    (share / "etc-link").symlink_to("/etc")  # absolute symlink to the host's /etc
    (share / "up").symlink_to("..")  # a ".." symlink
    (share / "secret-link").symlink_to(top / "secret")
    try:
        yield share
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def nvm(ketch: Ketch, tree: Path) -> Iterator[str]:
    """A tiny instance with a native mount of ``tree`` at TARGET, running, mounted."""
    with ketch.launched("native", "--memory", "512M") as name:
        ketch.run("stop", name)
        set_mount(ketch, name, tree)
        ketch.run("start", name)
        activate(ketch, name)
        yield name


def test_host_file_seen_and_guest_write_lands_with_guest_uid(
    ketch: Ketch, nvm: str, tree: Path
) -> None:
    assert ketch.exec(nvm, "cat", f"{TARGET}/hello.txt") == "from the host\n"
    ketch.exec(nvm, "sh", "-c", f"echo from the guest > {TARGET}/guest.txt")
    written = tree / "guest.txt"
    assert written.read_text() == "from the guest\n"
    uid = int(ketch.exec(nvm, "id", "-u"))
    assert written.stat().st_uid == uid  # no id mapping: the guest's uid, as is
    assert is_active(ketch, nvm) is True
    activate(ketch, nvm)  # idempotent: already mounted
    assert ketch.exec(nvm, "sh", "-c", f"grep -c ' {TARGET} virtiofs ' /proc/mounts") == "1\n"


def test_confined_to_source(ketch: Ketch, nvm: str, tree: Path) -> None:
    # virtiofsd itself sees only SOURCE: the process serving the guest (the child
    # in its own namespaces; its parent only waits for it) has the share as its root.
    pids = virtiofsds(ketch.root)
    serving = [p for p in pids if parent(p) in pids]
    assert len(serving) == 1
    assert sorted(os.listdir(f"/proc/{serving[0]}/root")) == sorted(os.listdir(tree))
    # From the guest: "..", the ".." symlink, an absolute symlink to /etc and a
    # symlink to the secret by its host path reach nothing of the host's.
    probe = (
        f"cat {TARGET}/../secret {TARGET}/up/secret {TARGET}/secret-link "
        f"{TARGET}/etc-link/hostname {TARGET}/etc-link/shadow; "
        f"grep -rs {SECRET} {TARGET}/ {TARGET}/up/ {TARGET}/etc-link/; true"
    )
    seen = ketch.run("exec", nvm, "--", "sudo", "sh", "-c", probe, check=False)
    assert SECRET not in seen.stdout + seen.stderr
    host_name = Path("/etc/hostname").read_text() if Path("/etc/hostname").exists() else None
    guest_name = ketch.exec(nvm, "hostname").strip()
    if host_name and host_name.strip() != guest_name:
        assert host_name.strip() not in seen.stdout.split()


def test_guest_root_makes_no_device_nodes_in_the_share(ketch: Ketch, nvm: str, tree: Path) -> None:
    # A block device node made in SOURCE would give a host user who opens it the
    # host's disk: virtiofsd runs without CAP_MKNOD.
    done = ketch.run(
        "exec", nvm, "--", "sudo", "mknod", f"{TARGET}/disk", "b", "8", "0", check=False
    )
    assert done.returncode != 0
    assert "not permitted" in done.stderr, done.stderr  # EPERM, not a missing tool
    assert not (tree / "disk").exists()
    # A FIFO needs no privilege, and works.
    ketch.exec(nvm, "mkfifo", f"{TARGET}/fifo")
    assert (tree / "fifo").is_fifo()
    (tree / "fifo").unlink()


def test_guest_root_is_the_hosts_nobody(ketch: Ketch, nvm: str, tree: Path) -> None:
    # The attack: guest root plants a setuid copy of a shell in SOURCE, for a
    # host user to run.  It lands owned by nobody (setuid to nobody gains nothing).
    ketch.exec(nvm, "sudo", "sh", "-c", f"cp /bin/busybox {TARGET}/bb && chmod 4755 {TARGET}/bb")
    planted = (tree / "bb").stat()
    assert (planted.st_uid, planted.st_gid) == (65534, 65534)
    assert planted.st_uid != 0
    (tree / "bb").unlink()
    # Guest root cannot change a host root's file in the share (0644, root's).
    done = ketch.run(
        "exec", nvm, "--", "sudo", "sh", "-c", f"echo x >> {TARGET}/hello.txt", check=False
    )
    assert done.returncode != 0
    assert (tree / "hello.txt").read_text() == "from the host\n"
    # The guest sees the host's root files as the overflow id, not as its root's.
    assert ketch.exec(nvm, "stat", "-c", "%u", f"{TARGET}/hello.txt").strip() == "65534"


def test_suspend_is_refused_and_the_instance_keeps_running(ketch: Ketch, nvm: str) -> None:
    done = ketch.run("suspend", nvm, check=False)
    assert done.returncode == 2
    assert "native mount" in done.stderr and TARGET in done.stderr
    assert ketch.state(nvm) == "Running"
    assert "suspend" not in ketch.tags(nvm)
    assert ketch.exec(nvm, "cat", f"{TARGET}/hello.txt") == "from the host\n"


def test_daemon_kill_keeps_virtiofsd_and_the_mount(ketch: Ketch, nvm: str) -> None:
    before = virtiofsds(ketch.root)
    ketch.kill_daemon(signal.SIGKILL)
    assert virtiofsds(ketch.root) == before
    assert ketch.exec(nvm, "cat", f"{TARGET}/hello.txt") == "from the host\n"  # a new daemon
    assert is_active(ketch, nvm) is True


def test_stop_start_keeps_the_device(ketch: Ketch, nvm: str, tree: Path) -> None:
    first = virtiofsds(ketch.root)
    ketch.run("stop", nvm)
    assert virtiofsds(ketch.root) == []  # ended with QEMU
    assert is_active(ketch, nvm) is None
    ketch.run("start", nvm)
    assert virtiofsds(ketch.root) not in ([], first)
    activate(ketch, nvm)
    assert ketch.exec(nvm, "cat", f"{TARGET}/guest.txt") == "from the guest\n"


def test_missing_source_is_skipped_then_force_stop_and_purge_leave_none(
    ketch: Ketch, nvm: str, tree: Path
) -> None:
    ketch.run("stop", "--force", nvm)
    assert virtiofsds(ketch.root) == []
    moved = tree.with_name("moved")
    tree.rename(moved)
    try:
        done = ketch.run("start", nvm)
        assert "missing" in done.stderr and str(tree) in done.stderr
        assert ketch.state(nvm) == "Running"
        assert virtiofsds(ketch.root) == []
        assert is_active(ketch, nvm) is False
        with pytest.raises(Exception, match="not attached"):
            activate(ketch, nvm)
    finally:
        moved.rename(tree)
    ketch.run("restart", nvm)
    assert virtiofsds(ketch.root) != []
    ketch.run("delete", "--purge", nvm)
    assert virtiofsds(ketch.root) == []


def test_virtiofsd_ends_when_its_qemu_is_killed(ketch: Ketch, tree: Path) -> None:
    """QEMU killed behind ketch's back: its virtiofsd sees the socket close and exits."""
    with ketch.launched("native", "--memory", "512M") as name:
        ketch.run("stop", name)
        set_mount(ketch, name, tree)
        ketch.run("start", name)
        assert virtiofsds(ketch.root) != []
        qemu = ketch.qemu_pid(name)
        assert qemu is not None
        os.kill(qemu, signal.SIGKILL)
        deadline = time.monotonic() + 60  # a bound on the wait, not a measurement
        while virtiofsds(ketch.root) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert virtiofsds(ketch.root) == []
