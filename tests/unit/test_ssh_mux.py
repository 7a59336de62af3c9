"""The multiplexed SSH connection: its argv, who may use its socket, stale and planted sockets.

Real files, real Unix sockets, real processes (``ssh`` against a closed
loopback port, ``sleep`` as a process that is not a master); the master
against a guest is in ``tests/integration/test_ssh_multiplexing.py``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.errors import InvalidArgument
from ketch.host.run import Completed
from ketch.host.ssh import master, ssh_argv
from ketch.layout import Root
from ketch.sshtarget import SshTarget

TARGET = SshTarget("vm1", "127.0.0.1", 2222, "ubuntu", "/keys/id", "/inst/vm1/known_hosts")


def options_of(argv: list[str]) -> dict[str, str]:
    found = {}
    for i, a in enumerate(argv):
        if a == "-o":
            key, _, value = argv[i + 1].partition("=")
            found[key] = value
    return found


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory (Unix socket paths are limited), 0700 like an instance directory."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="km-", dir="/tmp") as d:
        os.chmod(d, 0o700)
        yield Path(d)


def wait_for_argv(pid: int, name: str) -> None:
    """Until the process's /proc cmdline starts with ``name`` (bounded)."""
    import time

    from ketch.host import procs

    for _ in range(500):
        got = procs.cmdline(pid)
        if got and got[0] == name:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never showed the argv {name} ...: {procs.cmdline(pid)}")


def listen(path: Path, mode: int = 0o600) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    os.chmod(path, mode)
    return s


# -- the argv ----------------------------------------------------------------------------


def test_without_a_master_no_session_multiplexes() -> None:
    o = options_of(ssh_argv(TARGET, "true", tty=False))
    assert (o["ControlMaster"], o["ControlPath"]) == ("no", "none")


def test_a_session_goes_through_the_socket_it_is_given_and_never_becomes_a_master() -> None:
    argv = ssh_argv(TARGET.replace(control_path="/inst/vm1/ssh-mux.sock"), "true", tty=False)
    o = options_of(argv)
    assert (o["ControlMaster"], o["ControlPath"]) == ("no", "/inst/vm1/ssh-mux.sock")
    assert "ControlPersist" not in o
    assert argv[-3:] == ["--", "127.0.0.1", "true"]


def test_the_master_runs_no_command_no_tty_and_persists_only_as_a_process() -> None:
    argv = master.master_argv(TARGET, "/inst/vm1/ssh-mux.sock")
    o = options_of(argv)
    assert (o["ControlMaster"], o["ControlPersist"]) == ("yes", "no")
    assert o["ControlPath"] == "/inst/vm1/ssh-mux.sock"
    assert o["StrictHostKeyChecking"] == "yes" and o["BatchMode"] == "yes"
    assert "-N" in argv and "-T" in argv and "-t" not in argv
    assert argv[-2:] == ["--", "127.0.0.1"]  # no remote command
    assert master.is_master_argv(argv, "/inst/vm1/ssh-mux.sock")
    assert not master.is_master_argv(argv, "/inst/vm2/ssh-mux.sock")
    assert not master.is_master_argv(ssh_argv(TARGET, None, tty=False), "/inst/vm1/ssh-mux.sock")
    assert not master.is_master_argv(["sleep", "ControlMaster=yes"], "/x")


def test_a_master_needs_a_path_and_no_command() -> None:
    with pytest.raises(InvalidArgument):
        ssh_argv(TARGET, None, tty=False, master=True)
    with pytest.raises(InvalidArgument):
        ssh_argv(TARGET.replace(control_path="/s"), "true", tty=False, master=True)


@pytest.mark.parametrize(
    ("path", "written"),
    [
        ("/srv/my vms/vm1/ssh-mux.sock", '"/srv/my vms/vm1/ssh-mux.sock"'),
        ("/srv/100%/vm1/ssh-mux.sock", "/srv/100%%/vm1/ssh-mux.sock"),  # %-tokens expanded
    ],
)
def test_the_control_path_is_written_so_ssh_reads_it_back_literally(
    path: str, written: str
) -> None:
    argv = ssh_argv(TARGET.replace(control_path=path), "true", tty=False)
    assert f"ControlPath={written}" in argv


def test_a_control_path_ssh_would_expand_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="expand"):
        ssh_argv(TARGET.replace(control_path="/srv/${HOME}/s"), "true", tty=False)


def test_a_path_too_long_for_sun_path_with_ssh_s_suffix_gets_no_master() -> None:
    assert master.fits("/tmp/r/instances/vm1/ssh-mux.sock")
    assert not master.fits("/" + "d" * 85 + "/ssh-mux.sock")  # 99 + 17 > 107
    assert master.fits("/" + "d" * 75 + "/ssh-mux.sock")


# -- who may use the socket --------------------------------------------------------------


def test_the_cli_uses_only_a_0600_socket_of_its_own_user_in_a_private_directory(
    short_dir: Path,
) -> None:
    path = short_dir / "ssh-mux.sock"
    assert master.usable_control(str(path)) == ""  # nothing there
    with listen(path):
        assert master.usable_control(str(path)) == str(path)
        assert master.usable_control("") == ""
        assert master.usable_control("relative/ssh-mux.sock") == ""
        os.chmod(path, 0o660)  # group access: refused
        assert master.usable_control(str(path)) == ""
        os.chmod(path, 0o600)
        os.chmod(short_dir, 0o770)  # others could swap it: refused
        assert master.usable_control(str(path)) == ""
        os.chmod(short_dir, 0o700)
        assert master.usable_control(str(path)) == str(path)


def test_a_file_or_a_symbolic_link_is_not_a_socket(short_dir: Path) -> None:
    real = short_dir / "real.sock"
    with listen(real):
        link = short_dir / "ssh-mux.sock"
        link.symlink_to(real)
        assert master.usable_control(str(link)) == ""  # lstat: a link, even to a good socket
        link.unlink()
        link.write_bytes(b"")
        link.chmod(0o600)
        assert master.usable_control(str(link)) == ""


def test_a_socket_of_another_user_is_refused(short_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the socket to another user")
    path = short_dir / "ssh-mux.sock"
    with listen(path):
        os.chown(path, 65534, 65534)
        assert master.socket_stat(path) is None
        assert master.usable_control(str(path)) == ""


def test_another_user_cannot_reach_the_socket_through_the_instance_directory(
    short_dir: Path,
) -> None:
    """The attack: a second local user connects to the master's socket.  The 0700 directory
    stops it before the master's own uid check is reached."""
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root (and a system Python) to run a process as another user")
    path = short_dir / "ssh-mux.sock"
    with listen(path):
        code = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX)\n"
            "try:\n s.connect(sys.argv[1])\nexcept OSError as e:\n print(e.errno)\n"
            "else:\n print('connected')\n"
        )
        done = subprocess.run(
            ["/usr/bin/python3", "-I", "-c", code, str(path)],
            user=65534,
            group=65534,
            capture_output=True,
            text=True,
            check=True,
        )
        import errno

        assert done.stdout.strip() == str(errno.EACCES)


def test_ketchd_hands_out_only_the_very_socket_its_master_made(short_dir: Path) -> None:
    """A socket planted at the path (same user, same mode) after the master made its own is
    not the master's: ``live`` is False, so the daemon names no control path."""

    async def main() -> None:
        path = short_dir / "ssh-mux.sock"
        proc = await asyncio.create_subprocess_exec("sleep", "60")
        try:
            own = listen(path)
            m = master.Master(proc.pid, path, short_dir / "ssh-mux.pid", os.lstat(path), proc=proc)
            assert m.live()
            path.unlink()
            with listen(path):  # planted: another inode
                assert not m.live()
            own.close()
            path.unlink()
            assert not m.live()  # gone
            own = listen(path)
            m = master.Master(proc.pid, path, short_dir / "ssh-mux.pid", os.lstat(path), proc=proc)
            proc.kill()
            await proc.wait()
            assert not m.live()  # the process ended: a stale socket
            await m.stop()
            assert not path.exists()
            own.close()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    asyncio.run(main())


def test_a_pid_file_naming_a_process_that_is_not_a_master_ends_nothing(short_dir: Path) -> None:
    path, pidfile = short_dir / "ssh-mux.sock", short_dir / "ssh-mux.pid"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pidfile.write_text(f"{sleeper.pid}\n")
        with listen(path):
            assert master.end_stray(path, pidfile) is False
        assert sleeper.poll() is None  # not signalled
        assert not pidfile.exists() and not path.exists()  # the planted files are gone
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_stray_master_of_an_earlier_ketchd_is_ended(short_dir: Path) -> None:
    """A process whose argv is a master's on this path is ended (ssh cannot be made a master
    without a guest: a Python that sleeps, run under the name ssh with a master's argv,
    stands in)."""
    import sys

    path, pidfile = short_dir / "ssh-mux.sock", short_dir / "ssh-mux.pid"
    argv = master.master_argv(TARGET, str(path))
    proc = subprocess.Popen(
        ["ssh", "-c", "import time; time.sleep(60)", *argv[1:]], executable=sys.executable
    )
    try:
        wait_for_argv(proc.pid, "ssh")
        pidfile.write_text(f"{proc.pid}\n")
        assert master.end_stray(path, pidfile) is True
        assert proc.wait(10) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_master_that_cannot_connect_reports_ssh_s_failure_and_leaves_nothing(
    short_dir: Path,
) -> None:
    from test_ssh_argv import closed_port

    target = SshTarget("vm1", "127.0.0.1", closed_port(), "u", "/nonexistent/k", "/nonexistent/kh")
    path = short_dir / "ssh-mux.sock"
    pidfile, log = short_dir / "ssh-mux.pid", short_dir / "ssh-mux.log"
    path.write_bytes(b"planted")  # removed first: ssh would refuse to link its socket there
    got = asyncio.run(master.start(target, path, pidfile, log, timeout=30))
    assert isinstance(got, Completed)
    assert got.returncode == 255
    assert b"refused" in got.stderr
    assert not path.exists() and not pidfile.exists()
    assert log.stat().st_mode & 0o777 == 0o600


def test_the_daemon_names_no_socket_without_a_live_master(short_dir: Path) -> None:
    """A socket at the path that ketchd's master did not make (stale, planted) is not handed
    out: ``target`` has no control path."""
    from ketch.model import BootSpec, InstanceSpec
    from ketch.service import guestlink

    root = Root(short_dir)
    idir = root.instance("vm1")
    idir.path.mkdir(parents=True, mode=0o700)
    spec = InstanceSpec(
        name="vm1",
        image="tiny",
        image_id="x",
        release="",
        cpus=1,
        memory=256 << 20,
        disk=1 << 30,
        boot=BootSpec(),
        base_disk="",
        ssh_port=2222,
        mac="52:54:00:00:00:01",
        instance_id="i-1",
    )
    with listen(idir.ssh_mux_socket):
        assert guestlink.target(root, spec).control_path == ""
        assert guestlink.live_control(idir) == ""


def test_a_planted_socket_beside_a_master_like_process_is_not_adopted(short_dir: Path) -> None:
    """A new ketchd adopts an earlier one's master only if the master answering on the socket
    (``ssh -O check``) says the pid its pid file names: a listener planted at the path, even
    with a process whose argv looks like a master's, is not adopted."""
    import sys

    path, pidfile = short_dir / "ssh-mux.sock", short_dir / "ssh-mux.pid"
    argv = master.master_argv(TARGET, str(path))
    proc = subprocess.Popen(
        ["ssh", "-c", "import time; time.sleep(60)", *argv[1:]], executable=sys.executable
    )
    try:
        wait_for_argv(proc.pid, "ssh")
        pidfile.write_text(f"{proc.pid}\n")
        with listen(path) as planted:

            async def main() -> master.Master | None:
                async def refuse() -> None:  # accept and hang up: no mux protocol
                    loop = asyncio.get_running_loop()
                    planted.setblocking(False)
                    while True:
                        conn, _ = await loop.sock_accept(planted)
                        conn.close()

                answering = asyncio.create_task(refuse())
                try:
                    return await master.adopt(path, pidfile)
                finally:
                    answering.cancel()

            assert asyncio.run(main()) is None
        sleeper_pid = proc.pid
        pidfile.write_text(f"{sleeper_pid}\n")
        assert asyncio.run(master.adopt(path, pidfile)) is None  # no socket at all
    finally:
        proc.kill()
        proc.wait()


def test_a_guest_slower_than_the_first_banner_try_is_still_found() -> None:
    """A loaded host (TCG) can take longer than one 0.5 s try to send the banner: the tries
    grow (0.5, 1, 2 ... s), so a guest that answers every connection after 0.8 s is found
    instead of being abandoned on every try."""
    from ketch.errors import Timeout
    from ketch.host.ssh import wait_ready
    from ketch.progress import ListReporter

    async def main(reporter: ListReporter) -> None:
        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(0.8)
            writer.write(b"SSH-2.0-slow\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(slow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        target = SshTarget("vm1", "127.0.0.1", port, "u", "/nonexistent/k", "/nonexistent/kh")
        async with server:
            await wait_ready(target, timeout=6.0, reporter=reporter)

    reporter = ListReporter()
    with pytest.raises(Timeout):  # no real sshd behind the banner: the next phase times out
        asyncio.run(main(reporter))
    assert any("SSH-2.0-slow" in step for step in reporter.steps)


def test_a_guest_that_said_it_finished_is_ready_once_its_master_is_up() -> None:
    """``finished=True`` (a warm clone's agent said ``done`` after ``boot-finished``): the
    master made with the pinned key ends the wait, and no ``test -f boot-finished`` probe
    is sent.  Without it the same guest (a banner and a "master", but no sshd to run the
    probe) is never ready.  Nor is the banner probed first: the guest listens already, and
    the probe would cost it a connection of its own before the master's."""
    from ketch.errors import Timeout
    from ketch.host.ssh import wait_ready
    from ketch.progress import ListReporter

    banners: list[bool] = []

    async def main(finished: bool) -> int:
        async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            banners.append(finished)
            writer.write(b"SSH-2.0-test\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(banner, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        target = SshTarget("vm1", "127.0.0.1", port, "u", "/nonexistent/k", "/nonexistent/kh")
        made: list[float] = []

        async def connect(left: float) -> SshTarget | Completed:
            made.append(left)  # the master is "up": its socket named
            return target.replace(control_path="/nonexistent/ssh-mux.sock")

        async with server:
            await wait_ready(
                target, timeout=3.0, reporter=ListReporter(), connect=connect, finished=finished
            )
        return len(made)

    assert asyncio.run(main(True)) == 1
    assert banners == []
    with pytest.raises(Timeout):  # the probe through a socket with no master behind it fails
        asyncio.run(main(False))
    assert banners and not any(banners)  # probed, without finished only
