"""ketch.host.libvirt's pure and bounded parts, without libvirt: reasons, the prober's deadline,
the SSH files of a qemu+ssh host (host/libvirt_ssh.py) and /proc/meminfo (host/node.py)."""

from __future__ import annotations

import asyncio
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ketch.errors import HostUnreachable
from ketch.host import libvirt_ssh
from ketch.host.libvirt import NodeFacts, Prober, reason
from ketch.host.node import parse_meminfo

FACTS = NodeFacts(cpus=2, memory_total=8 << 30, memory_free=4 << 30, disk_free=None, disk_pool=None)


def test_reasons_are_one_short_line() -> None:
    assert (
        reason(
            "Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory"
        )
        == "Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory"
    )
    changed = (
        "Cannot recv data: @@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
    )
    assert reason(changed) == "the host's SSH key is not the one trusted"
    assert "not trusted" in reason(
        "Cannot recv data: Host key verification failed.: Connection reset"
    )
    assert reason("Cannot recv data: Connection timed out during banner exchange\nmore") == (
        "Connection timed out during banner exchange more"
    )
    assert (
        reason(
            "End of file while reading data: virt-ssh-helper: cannot connect: Input/output error"
        )
        == "virt-ssh-helper: cannot connect"
    )
    assert len(reason("x" * 1000)) == 240 and reason("") == "libvirt gave no reason"


def test_a_probe_that_blocks_is_cut_at_its_deadline_and_costs_one_thread() -> None:
    release = threading.Event()
    calls: list[str] = []

    def blocking(uri: str) -> NodeFacts:
        calls.append(uri)
        release.wait(30)
        return FACTS

    prober = Prober(blocking)

    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(HostUnreachable, match=r"did not answer within 0 s$"):
            await prober.probe("qemu+ssh://dead/system", 0.2)
        with pytest.raises(HostUnreachable, match="an earlier probe still waits"):
            await prober.probe("qemu+ssh://dead/system", 0.2)
        assert time.monotonic() - started < 2
        assert calls == ["qemu+ssh://dead/system"] and prober.in_flight() == 1  # one thread
        release.set()
        for _ in range(100):
            if prober.in_flight() == 0:
                break
            await asyncio.sleep(0.02)
        assert await prober.probe("qemu+ssh://dead/system", 5) == FACTS  # a new probe now
        assert len(calls) == 2

    asyncio.run(main())


def test_many_hosts_are_probed_at_once_within_one_deadline() -> None:
    def slow(uri: str) -> NodeFacts:
        time.sleep(0.3)
        return FACTS

    prober = Prober(slow)

    async def main() -> float:
        started = time.monotonic()
        got = await asyncio.gather(*(prober.probe(f"qemu+ssh://h{i}/system", 5) for i in range(20)))
        assert got == [FACTS] * 20
        return time.monotonic() - started

    assert asyncio.run(main()) < 2.5  # not 20 x 0.3 s: no shared pool to queue on


def test_errors_of_the_call_are_raised_foreign_ones_translated() -> None:
    def refuses(uri: str) -> NodeFacts:
        raise HostUnreachable("refused")

    def buggy(uri: str) -> NodeFacts:
        raise ValueError("odd")

    with pytest.raises(HostUnreachable, match=r"^refused$"):
        asyncio.run(Prober(refuses).probe("qemu:///system", 5))
    with pytest.raises(HostUnreachable, match="ValueError: odd"):
        asyncio.run(Prober(buggy).probe("qemu:///system", 5))


def test_a_libvirtd_that_never_answers_is_cut_at_the_deadline(tmp_path: Path) -> None:
    """The real binding against a Unix socket that accepts and says nothing (a hung libvirtd:
    no ssh timeout applies here); the thread ends once the socket closes."""
    pytest.importorskip("libvirt")
    from ketch.host.libvirt import probe

    path = tmp_path / "libvirt-sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)
    held: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True)
    accepting.start()
    prober = Prober(probe)
    started = time.monotonic()
    with pytest.raises(HostUnreachable, match="did not answer within 1 s"):
        asyncio.run(prober.probe(f"qemu:///system?socket={path}", 1.0))
    assert time.monotonic() - started < 3
    assert prober.in_flight() == 1
    accepting.join(5)
    for conn in held:
        conn.close()
    server.close()
    deadline = time.monotonic() + 10
    while prober.in_flight() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert prober.in_flight() == 0  # libvirt saw the end of the stream: the thread is done


def test_ssh_config_verifies_with_ketchs_known_hosts(tmp_path: Path) -> None:
    text = libvirt_ssh.config_text(tmp_path, "/keys/id", known_hosts=True)
    lines = text.splitlines()
    assert f'UserKnownHostsFile "{tmp_path}/known_hosts"' in lines
    assert "StrictHostKeyChecking yes" in lines and "BatchMode yes" in lines
    assert 'IdentityFile "/keys/id"' in lines and "IdentitiesOnly yes" in lines
    assert "ConnectTimeout 10" in lines
    # ketch's options come first (ssh takes the first value), the user's config after
    assert lines.index("Include ~/.ssh/config") > lines.index("StrictHostKeyChecking yes")
    bare = libvirt_ssh.config_text(tmp_path, None, known_hosts=False)
    assert "StrictHostKeyChecking" not in bare and "IdentityFile" not in bare


def test_the_files_are_written_with_their_modes_and_the_wrapper_runs(tmp_path: Path) -> None:
    d = tmp_path / "hosts" / "big1"
    wrapper = libvirt_ssh.write(d, "/keys/id", "[h]:22 ssh-ed25519 AAAA\n")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "known_hosts").stat().st_mode) == 0o600
    assert stat.S_IMODE(wrapper.stat().st_mode) == 0o700
    assert wrapper.read_text() == f'#!/bin/sh\nexec ssh -F {d}/ssh_config "$@"\n'
    libvirt_ssh.write(d, None, None)  # the known hosts taken away: the copy goes
    assert not (d / "known_hosts").exists()
    fake = tmp_path / "echo-ssh"
    fake.write_text(libvirt_ssh.wrapper_text(d, ssh="echo"))
    fake.chmod(0o700)
    out = subprocess.run([str(fake), "-p", "22", "--", "h", "a b"], capture_output=True, text=True)
    assert out.stdout == f"-F {d}/ssh_config -p 22 -- h a b\n"


def test_meminfo() -> None:
    text = (
        "MemTotal:       16303428 kB\nMemFree:  1000 kB\nMemAvailable:   12016580 kB\n"
        "HugePages_Total:       0\n"
    )
    assert parse_meminfo(text) == (16303428 * 1024, 12016580 * 1024)
    assert parse_meminfo("MemTotal: 10 kB\nMemFree: 4 kB\n") == (10240, 4096)  # old kernels


def test_the_cli_and_the_daemon_do_not_import_libvirt_until_a_probe(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from ketch.cli.main import main\n"
        "for argv in (['list'], ['info', 'vm'], ['exec', 'vm', '--', 'true'], ['host', 'list']):\n"
        "    main(argv)\n"
        "import ketch.daemon.api, ketch.daemon.main, ketch.service.hosts\n"
        "print('libvirt' in sys.modules)\n"
    )
    blocker = tmp_path / "not-a-dir"  # a root that cannot exist: no daemon is ever started
    blocker.write_text("")
    env = {"KETCH_STORAGE": str(blocker / "storage"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.stdout.strip().splitlines()[-1] == "False", done.stderr
