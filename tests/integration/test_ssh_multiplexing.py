"""The multiplexed SSH connection against a real guest: made, reused, ended, made again.

"Through the master" is shown by the guest itself: QEMU's user networking
passes the host-side source port through, so ``$SSH_CONNECTION`` in the guest
names the TCP connection a session rides on; a session through the master
names the master's own connection (its local port, read from /proc).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ketchcli import Ketch

from ketch.host import procs
from ketch.host.ssh import master

pytestmark = pytest.mark.vm

DEADLINE = 120.0  # seconds a re-made master may take on a busy TCG machine (never asserted)


@pytest.fixture(scope="module")
def mvm(ketch: Ketch) -> Iterator[str]:
    with ketch.launched("mux", "--memory", "256M") as name:
        yield name


def idir(ketch: Ketch, name: str) -> Path:
    return ketch.root / "instances" / name


def master_pid(ketch: Ketch, name: str) -> int | None:
    """The live ssh master of ``name`` (its pid file checked against /proc), or None."""
    d = idir(ketch, name)
    pid = procs.read_pidfile(d / "ssh-mux.pid")
    if pid is None:
        return None
    return pid if master.is_master_argv(procs.cmdline(pid), str(d / "ssh-mux.sock")) else None


def masters_of(ketch: Ketch, name: str) -> list[int]:
    """Every ssh master process on ``name``'s socket path (a /proc scan, pid files aside)."""
    path = str(idir(ketch, name) / "ssh-mux.sock")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and master.is_master_argv(procs.cmdline(int(entry.name)), path):
            found.append(int(entry.name))
    return found


def local_ports(pid: int) -> set[int]:
    """The local ports of the TCP sockets process ``pid`` holds (/proc, no ss needed)."""
    inodes = set()
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def session_port(ketch: Ketch, name: str) -> int:
    """The host-side port of the TCP connection an ``exec`` session rode on."""
    out = ketch.exec(name, "sh", "-c", "echo $SSH_CONNECTION").split()
    return int(out[1])


def wait_master(ketch: Ketch, name: str, *, not_pid: int | None = None) -> int:
    """Until a live master other than ``not_pid`` is up (bounded); its pid."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        pid = master_pid(ketch, name)
        if pid is not None and pid != not_pid and (idir(ketch, name) / "ssh-mux.sock").exists():
            return pid
        time.sleep(0.2)
    raise AssertionError(f"no ssh master for {name} within {DEADLINE} s")


def assert_through(ketch: Ketch, name: str, pid: int) -> None:
    assert session_port(ketch, name) in local_ports(pid)


def assert_no_master(ketch: Ketch, name: str) -> None:
    d = idir(ketch, name)
    assert masters_of(ketch, name) == []
    assert not (d / "ssh-mux.sock").exists()
    assert not (d / "ssh-mux.pid").exists()


# -- the tests (in order: each leaves the instance running, the last purges it) -----------


def test_exec_goes_through_the_master_on_a_private_socket(ketch: Ketch, mvm: str) -> None:
    pid = wait_master(ketch, mvm)
    sock = idir(ketch, mvm) / "ssh-mux.sock"
    st = sock.lstat()
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()
    assert idir(ketch, mvm).stat().st_mode & 0o777 == 0o700
    assert_through(ketch, mvm, pid)
    assert session_port(ketch, mvm) == session_port(ketch, mvm)  # one connection for all
    assert masters_of(ketch, mvm) == [pid]
    # what exec prints and its exit code are the guest command's, as without a master
    done = ketch.run("exec", mvm, "--", "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
    assert (done.returncode, done.stdout, done.stderr) == (7, "out\n", "err\n")


def test_exec_starts_without_msgspec_typing_or_dataclasses(ketch: Ketch, mvm: str) -> None:
    """exec's reply is decoded by ketch.api.plain: the heavy imports stay off its start-up."""
    import sys

    heavy = ("msgspec", "typing", "dataclasses", "inspect", "urllib.parse", "ketch.api.models")
    code = (
        "import sys\n"
        "from ketch.cli.main import main\n"
        f"code = main(['exec', {mvm!r}, '--', 'echo', 'hi'])\n"
        f"print(code, [m for m in {heavy!r} if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ketch.env, timeout=120
    )
    assert done.stdout == "hi\n0 []\n", done.stderr


def test_another_local_user_cannot_use_the_socket(ketch: Ketch, mvm: str) -> None:
    """The attack: a second user asks the master to run a command in the guest."""
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root (and a system Python) to run a process as another user")
    wait_master(ketch, mvm)
    sock = str(idir(ketch, mvm) / "ssh-mux.sock")
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "try:\n s.connect(sys.argv[1])\nexcept OSError as e:\n print(e.errno)\n"
        "else:\n print('connected')\n"
    )
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", code, sock],
        user=65534,
        group=65534,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == str(errno.EACCES)
    ssh = subprocess.run(
        ["ssh", "-F", "/dev/null", "-o", f"ControlPath={sock}", "-O", "check", "127.0.0.1"],
        user=65534,
        group=65534,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ssh.returncode == 255 and "Permission denied" in ssh.stderr


def test_a_killed_master_is_made_again_and_exec_never_fails(ketch: Ketch, mvm: str) -> None:
    old = wait_master(ketch, mvm)
    os.kill(old, signal.SIGKILL)
    while procs.alive(old):
        time.sleep(0.05)
    assert ketch.exec(mvm, "echo", "direct").strip() == "direct"  # a stale socket: not used
    new = wait_master(ketch, mvm, not_pid=old)
    assert_through(ketch, mvm, new)


def test_a_socket_planted_at_the_path_is_not_used_and_is_replaced(ketch: Ketch, mvm: str) -> None:
    old = wait_master(ketch, mvm)
    sock = idir(ketch, mvm) / "ssh-mux.sock"
    sock.unlink()
    planted = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        planted.bind(str(sock))
        os.chmod(sock, 0o600)  # as the master's own: same user, same mode
        planted.listen(8)
        planted.setblocking(False)
        ident = (sock.lstat().st_dev, sock.lstat().st_ino)
        assert ketch.exec(mvm, "echo", "ok").strip() == "ok"
        with pytest.raises(BlockingIOError):
            planted.accept()  # nobody connected to it: neither ketch exec nor ketchd
        new = wait_master(ketch, mvm, not_pid=old)
        st = sock.lstat()
        assert (st.st_dev, st.st_ino) != ident  # the planted socket was removed
        assert not procs.alive(old)
        with pytest.raises(BlockingIOError):
            planted.accept()
        assert_through(ketch, mvm, new)
    finally:
        planted.close()


def test_suspend_ends_the_master_and_resume_makes_a_new_one(ketch: Ketch, mvm: str) -> None:
    old = wait_master(ketch, mvm)
    ketch.run("suspend", mvm)
    assert not procs.alive(old)
    assert_no_master(ketch, mvm)
    ketch.run("start", mvm)
    new = wait_master(ketch, mvm, not_pid=old)
    assert_through(ketch, mvm, new)


def test_a_resume_knows_whether_the_saved_guest_had_finished_booting(
    ketch: Ketch, mvm: str
) -> None:
    """The ready marker names the QEMU run seen ready; a suspend of it keeps "saved"."""
    d = idir(ketch, mvm)

    def run_now() -> str:
        pid = procs.read_pidfile(d / "qemu.pid")
        assert pid is not None
        return f"run {pid} {procs.start_time(pid)}"

    assert (d / "ready").read_text() == run_now()
    ketch.run("suspend", mvm)
    assert (d / "ready").read_text() == "saved"  # the resume waits for the master only
    ketch.run("start", mvm)
    assert (d / "ready").read_text() == run_now()
    assert ketch.exec(mvm, "test", "-f", "/var/lib/cloud/instance/boot-finished") == ""
    # a run not seen ready (here: a marker of another run) is saved without the mark,
    # and its resume probes boot-finished as a boot does
    (d / "ready").write_text("run 1 1")
    ketch.run("suspend", mvm)
    assert not (d / "ready").exists()
    ketch.run("start", mvm)
    assert (d / "ready").read_text() == run_now()


def test_stop_ends_the_master_and_start_makes_a_new_one(ketch: Ketch, mvm: str) -> None:
    old = wait_master(ketch, mvm)
    ketch.run("stop", mvm)
    assert_no_master(ketch, mvm)
    ketch.run("start", mvm)
    new = wait_master(ketch, mvm, not_pid=old)
    assert_through(ketch, mvm, new)
    ketch.run("stop", "--force", mvm)
    assert_no_master(ketch, mvm)
    ketch.run("start", mvm)
    assert_through(ketch, mvm, wait_master(ketch, mvm, not_pid=new))


def test_a_restarted_ketchd_keeps_the_master_and_the_sessions_on_it(ketch: Ketch, mvm: str) -> None:
    pid = wait_master(ketch, mvm)
    ketch.kill_daemon(signal.SIGKILL)
    assert procs.alive(pid)
    assert ketch.exec(mvm, "true") == ""  # a new ketchd, started by the CLI
    deadline = time.monotonic() + DEADLINE
    while session_port(ketch, mvm) not in local_ports(pid):  # adopted, then handed out
        assert time.monotonic() < deadline, "the new ketchd never used the master"
        time.sleep(0.5)
    assert masters_of(ketch, mvm) == [pid]


def test_qemu_s_death_ends_the_master(ketch: Ketch, mvm: str) -> None:
    pid = wait_master(ketch, mvm)
    qemu = ketch.qemu_pid(mvm)
    assert qemu is not None
    os.kill(qemu, signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE
    while procs.alive(pid) or (idir(ketch, mvm) / "ssh-mux.pid").exists():
        assert time.monotonic() < deadline, "the master outlived its QEMU"
        time.sleep(0.2)
    ketch.run("stop", "--force", mvm)
    ketch.run("start", mvm)
    assert_through(ketch, mvm, wait_master(ketch, mvm, not_pid=pid))


def test_purge_leaves_no_master(ketch: Ketch, mvm: str) -> None:
    pid = wait_master(ketch, mvm)
    ketch.run("delete", "--purge", mvm)
    assert not procs.alive(pid)
    assert masters_of(ketch, mvm) == []
