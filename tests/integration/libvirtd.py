"""A libvirtd for the integration tests, started by hand, with no network able to start.

Shared by test_hosts.py, test_libvirt_driver.py, test_libvirt_launch.py and
test_libvirt_snapshots.py and test_two_hosts.py.  ``libvirtd`` (Debian's, no systemd
here) runs in the foreground with a config and pid file of its own (``libvirtd -f CONF -p
PIDFILE``), in a private mount namespace in which ``/etc/libvirt/qemu/networks/autostart``
is an empty directory, so no libvirt network can start (no virbr0, no dnsmasq in this
machine's namespace); optionally with a ``qemu.conf`` of the test's bind-mounted over
``/etc/libvirt/qemu.conf`` in that namespace only, and directories of its own over the
ones it keeps definitions and logs in (``private``).  It answers on ``qemu:///system``.
:data:`LOCK` serialises the modules that start one; a libvirtd a module did not start is
never touched.  :func:`ketch_on_libvirtd` is the fixture body of the modules that run a
ketchd with a libvirt host (``launch --host``): their own libvirtd, a ``dir`` pool named
``ketch`` in a temporary directory, a storage root with the tiny image.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _seed_vault
from ketchcli import Ketch

from ketch.model import ImageInfo

LIBVIRTD = shutil.which("libvirtd") or "/usr/sbin/libvirtd"
LOCK = Path("/run/lock/ketch-test-libvirtd.lock")
SOCKET = Path("/run/libvirt/libvirt-sock")
AUTOSTART = Path("/etc/libvirt/qemu/networks/autostart")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
# The qemu.conf of the modules that boot domains: QEMU as root, no security driver, no
# virtlogd (so a vault or pool under /tmp is readable, and nothing else must run).
AS_ROOT = (
    'user = "root"\ngroup = "root"\nsecurity_driver = "none"\n'
    'stdio_handler = "file"\nremember_owner = 0\n'
)
# What such a libvirtd sees empty and keeps for itself: domain and pool definitions, QEMU's
# logs, and /var/lib/libvirt/qemu (managed save images, snapshot metadata, runtime files).
STATE = tuple(
    Path(p)
    for p in (
        "/etc/libvirt/qemu",
        "/etc/libvirt/storage",
        "/var/log/libvirt/qemu",
        "/var/lib/libvirt/qemu",
    )
)


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    """Held by a test module that runs its own libvirtd (one such module at a time);
    the module is skipped when a libvirtd it did not start answers on qemu:///system."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if answers():
            pytest.skip("a libvirtd this test did not start answers on qemu:///system")
        yield


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-q", "-c", "qemu:///system", *args],
        capture_output=True, text=True, timeout=60, check=check,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers() -> bool:
    """Does a libvirtd answer on the system socket?"""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(SOCKET))
        return True
    except OSError:
        return False


class Libvirtd:
    """One libvirtd run by this module, with no network able to start."""

    def __init__(
        self, work: Path, *, qemu_conf: str | None = None, private: tuple[Path, ...] = ()
    ) -> None:
        self.work = work
        self.qemu_conf: Path | None = None
        if qemu_conf is not None:
            self.qemu_conf = work / "qemu.conf"
            self.qemu_conf.write_text(qemu_conf)
            self.qemu_conf.chmod(0o600)
        # Directories this libvirtd sees empty and writes in for itself (domain and pool
        # definitions, QEMU's logs), so nothing it defines outlives it on this machine.
        self.private = {path: work / "private" / path.relative_to("/") for path in private}
        for mine in self.private.values():
            mine.mkdir(parents=True)
        self.conf = work / "libvirtd.conf"
        self.pidfile = work / "libvirtd.pid"
        self.log = work / "libvirtd.log"
        self.empty = work / "no-autostart"
        self.empty.mkdir()
        self.conf.write_text(f'log_outputs = "3:file:{self.log}"\n')
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        script = f"mount --bind {self.empty} {AUTOSTART} && "
        if self.qemu_conf is not None:  # seen by this libvirtd only
            script += f"mount --bind {self.qemu_conf} {QEMU_CONF} && "
        for path, mine in self.private.items():  # a missing mount point is made (empty:
            # libvirtd would make it itself, e.g. /etc/libvirt/storage at its first pool)
            script += f"mkdir -p {path} && mount --bind {mine} {path} && "
        script += f"exec {LIBVIRTD} -f {self.conf} -p {self.pidfile}"
        out = (self.work / "libvirtd.out").open("ab")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
        out.close()
        deadline = time.monotonic() + 90  # its first start probes QEMU's capabilities
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"libvirtd ended: {self.tail()}")
            if answers() and virsh("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"libvirtd did not answer within 90 s: {self.tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def tail(self) -> str:
        text = (self.work / "libvirtd.out").read_text(errors="replace")
        if self.log.exists():
            text += self.log.read_text(errors="replace")
        return text[-3000:]


def volumes(pool: str = "ketch") -> list[str]:
    """The names of the pool's volumes, as libvirt lists them (after a refresh)."""
    virsh("pool-refresh", pool)
    done = virsh("vol-list", "--pool", pool, check=False)
    assert done.returncode == 0, done.stderr
    return sorted(line.split()[0] for line in done.stdout.splitlines() if line.strip())


@contextlib.contextmanager
def ketch_on_libvirtd(tiny: ImageInfo, prefix: str) -> Iterator[tuple[Ketch, Path, Libvirtd]]:
    """A libvirtd of the module's own (:data:`AS_ROOT`, :data:`STATE`) with the pool
    ``ketch`` in a temporary directory (defined in that libvirtd's private configuration,
    so it outlives a restart of it), and a ketchd on a root of its own with the tiny image,
    TCG: ``(ketch, the pool's directory, the libvirtd)``.  Every domain left is undefined
    at the end (the libvirtd's definitions are its own)."""
    with exclusive():  # one module with its own libvirtd at a time
        work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        root = work / "root"
        root.mkdir(mode=0o700)
        pool = work / "pool"
        pool.mkdir()
        _seed_vault(root, tiny)
        lv = Libvirtd(work, qemu_conf=AS_ROOT, private=STATE)
        k = Ketch(root)
        try:
            lv.start()
            virsh("pool-define-as", "ketch", "dir", "--target", str(pool))
            virsh("pool-start", "ketch")
            k.run("set", "local.accel=tcg")
            yield k, pool, lv
        finally:
            try:
                k.teardown()
            finally:
                if answers():
                    for dom in virsh("list", "--all", "--name", check=False).stdout.split():
                        virsh("destroy", dom, check=False)
                        virsh("undefine", dom, "--managed-save", "--nvram",
                              "--snapshots-metadata", check=False)  # fmt: skip
                    virsh("pool-destroy", "ketch", check=False)
                    virsh("pool-undefine", "ketch", check=False)
                lv.stop()
                shutil.rmtree(work, ignore_errors=True)
