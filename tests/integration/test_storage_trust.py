"""Issue 12, item 6: the storage root is not trusted as found.

Attacks performed: a pre-existing 0755 root (other users could read
``ketch.db`` and disks), a socket in the root owned by another user, a daemon
run by another user (``nobody``) answering on the socket the client uses, and
after a real launch every file and directory ketch, QEMU and qemu-img created
is checked for owner-only modes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ketchcli import Ketch

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


@pytest.fixture
def bare_root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ketch-trust-", dir="/tmp"))
    try:
        yield path
    finally:
        pid_file = path / "ketchd.pid"
        if pid_file.exists():
            Ketch(path).kill_daemon()
        shutil.rmtree(path, ignore_errors=True)


def _ketchd(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ketch.daemon.main", "--storage", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_0755_root_is_refused_with_the_chmod_that_fixes_it(bare_root: Path) -> None:
    bare_root.chmod(0o755)
    done = _ketchd(bare_root)
    assert done.returncode == 2, done.stderr
    assert "open to other users (mode 0755)" in done.stderr
    assert f"chmod 700 {bare_root}" in done.stderr
    assert stat.S_IMODE(bare_root.stat().st_mode) == 0o755  # refused, not silently changed
    assert not (bare_root / "ketchd.sock").exists()
    # Through the CLI (which starts the daemon): the same words, exit 2, no 20 s wait.
    cli = Ketch(bare_root).run("list", check=False, timeout=60)
    assert cli.returncode == 2, cli.stderr
    assert "open to other users" in cli.stderr and f"chmod 700 {bare_root}" in cli.stderr
    assert not (bare_root / "ketch.db").exists()


def test_a_root_owned_by_another_user_is_refused(bare_root: Path) -> None:
    os.chown(bare_root, NOBODY, -1)
    done = _ketchd(bare_root)
    assert done.returncode == 2, done.stderr
    assert "is owned by nobody, not by root" in done.stderr
    assert f"chown -R root: {bare_root}" in done.stderr


def test_a_socket_owned_by_another_user_in_the_root_is_refused(bare_root: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(bare_root / "ketchd.sock"))
    sock.close()
    os.chown(bare_root / "ketchd.sock", NOBODY, -1)
    done = _ketchd(bare_root)
    assert done.returncode == 2, done.stderr
    assert "ketchd.sock is owned by nobody" in done.stderr
    assert f"rm {bare_root / 'ketchd.sock'}" in done.stderr
    assert (bare_root / "ketchd.sock").lstat().st_uid == NOBODY  # left for the user to judge


def test_an_old_root_s_open_files_are_tightened_and_foreign_ones_refused(bare_root: Path) -> None:
    db = bare_root / "ketch.db"
    db.write_bytes(b"")
    db.chmod(0o644)
    (bare_root / "instances" / "old").mkdir(parents=True, mode=0o755)
    (bare_root / "instances" / "old").chmod(0o755)
    log = bare_root / "instances" / "old" / "serial.log"
    log.write_text("boot\n")
    log.chmod(0o644)
    planted = bare_root / "instances" / "old" / "qemu.pid"
    planted.write_text("1\n")
    os.chown(planted, NOBODY, -1)
    done = _ketchd(bare_root)
    assert done.returncode == 2, done.stderr
    assert f"{planted} in the storage root is owned by nobody" in done.stderr
    planted.unlink()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ketch.daemon.main", "--storage", str(bare_root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert Ketch(bare_root).json("list") == {"list": []}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    for path in (db, log, log.parent, log.parent.parent):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def _impostor(path: Path, report: int) -> None:
    """In a forked child: become ``nobody``, serve ``path``, report bytes received."""
    try:
        os.setgid(NOBODY)
        os.setgroups([])
        os.setuid(NOBODY)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.listen(8)
        os.write(report, b"ready\n")
        c, _ = s.accept()
        c.settimeout(30)
        got = 0
        try:
            while chunk := c.recv(65536):
                got += len(chunk)
        except TimeoutError:
            pass
        os.write(report, f"{got}\n".encode())
    finally:
        os._exit(0)


def test_a_daemon_run_by_another_user_is_refused_before_anything_is_sent(
    bare_root: Path,
) -> None:
    os.chown(bare_root, NOBODY, -1)  # a shared root another user's ketchd serves
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _impostor(bare_root / "ketchd.sock", write_end)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "r") as report:
            assert report.readline().strip() == "ready"
            assert (bare_root / "ketchd.sock").lstat().st_uid == NOBODY
            done = Ketch(bare_root).run(
                "launch", "--name", "leak", "--cloud-init", "-",
                input=b"#cloud-config\nwrite_files: [{path: /s, content: hunter2}]\n",
                check=False, timeout=60,
            )  # fmt: skip
            assert done.returncode == 3, done.stderr
            assert "served by uid 65534" in done.stderr and "nothing was sent" in done.stderr
            assert "Traceback" not in done.stderr
            assert report.readline().strip() == "0"  # not one byte reached the impostor
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        os.waitpid(pid, 0)


@pytest.mark.vm
def test_files_created_by_a_launch_are_owner_only(ketch: Ketch) -> None:
    with ketch.launched("modes", "--memory", "256M") as name:
        idir = ketch.root / "instances" / name
        expected = {
            "disk.qcow2", "cidata.iso", "qemu.pid", "qmp.sock", "serial.log", "qemu.log",
            "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "known_hosts",
        }  # fmt: skip
        present = {p.name for p in idir.iterdir()}
        assert expected - {"known_hosts"} <= present, present
        checked: list[Path] = []
        for top in ketch.root.iterdir():
            if top.name == "vault":  # hard links to the shared test image cache
                assert stat.S_IMODE(top.stat().st_mode) & 0o077 == 0
                continue
            paths = [top, *top.rglob("*")] if top.is_dir() else [top]
            for path in paths:
                mode = stat.S_IMODE(path.lstat().st_mode)
                # QEMU -daemonize sets its own umask 027; the driver makes the serial
                # log beforehand and tightens the monitor's socket after the start.
                assert mode & 0o077 == 0, f"{path} is {mode:04o}"
                checked.append(path)
        names = {p.name for p in checked}
        for must in (
            "ketch.db", "ketch.db-wal", "ketchd.log", "ketchd.pid", "ketchd.sock",
            "ssh", "id_ed25519", "id_ed25519.pub", "instances", name, *present,
        ):  # fmt: skip
            assert must in names, must
