"""Issue 12, items 4 and 5, performed against a real ketchd process on its socket.

Item 5: 1000 slow connections (partial heads) against a ketchd whose fd limit
is lowered to 256 in a ``preexec_fn``; a head trickled one byte at a time; a
body that never completes; an idle connection; every connection busy.  The
timeouts are shortened for the test through ``KETCH_*_TIMEOUT``.

Item 4: the gz+b64 alias bomb is refused and ketchd's resident memory
(``VmRSS``, read before and after) stays within a generous bound; a large
cloud-init being parsed does not stop ketchd from answering others.

No VM is booted here: the requests are refused (or are reads) before any.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ketchcli import Ketch

from ketch.client import request

FD_LIMIT = 256
WAIT = 120.0  # upper bound for waiting on the daemon; never a pass criterion
MiB = 1024 * 1024


@dataclass
class Daemon:
    root: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def socket(self) -> str:
        return str(self.root / "ketchd.sock")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def get(self, path: str) -> tuple[int, bytes]:
        resp = request(self.socket, "GET", path, None, WAIT)
        return resp.status, resp.read()

    def get_json(self, path: str) -> tuple[int, Any]:
        status, body = self.get(path)
        return status, json.loads(body)


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.fixture
def start_daemon() -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(preexec: Callable[[], None] | None = None, **env: str) -> Daemon:
        root = Path(tempfile.mkdtemp(prefix="ketch-lim-", dir="/tmp"))
        log = root / "ketchd.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ketch.daemon.main", "--storage", str(root)],
                stdout=out,
                stderr=out,
                env={**os.environ, **env},
                preexec_fn=preexec,
            )
        daemon = Daemon(root, proc, log)
        started.append(daemon)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                if daemon.get("/v1/version")[0] == 200:
                    return daemon
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        raise AssertionError(f"ketchd did not answer: {log.read_text()}")

    try:
        yield start
    finally:
        for daemon in started:
            daemon.proc.terminate()
            daemon.proc.wait(timeout=60)
            subprocess.run(["rm", "-rf", str(daemon.root)], check=False)


def _slow_connections(path: str, count: int, head: bytes) -> list[socket.socket]:
    """``count`` connections that each sent part of a request head, and hold."""
    socks: list[socket.socket] = []
    deadline = time.monotonic() + WAIT
    while len(socks) < count and time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
            s.send(head)
        except BlockingIOError:  # the backlog is full: ketchd has not accepted yet
            s.close()
            time.sleep(0.005)
            continue
        except OSError:  # dropped while we sent: counts as opened, and closed
            pass
        socks.append(s)
    assert len(socks) == count
    return socks


def _closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _wait_all_closed(socks: list[socket.socket]) -> None:
    deadline = time.monotonic() + WAIT
    pending = list(socks)
    while pending and time.monotonic() < deadline:
        pending = [s for s in pending if not _closed_by_server(s)]
        time.sleep(0.1)
    assert not pending, f"{len(pending)} slow connections are still open"


def _sockets(pid: int) -> set[str]:
    """The sockets process ``pid`` has open (``socket:[inode]``): its listener and the
    connections it accepted.  One not in an earlier set was accepted since."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:"):
            found.add(link)
    return found


def _log_facts(log: Path) -> tuple[int, str]:
    text = log.read_text(errors="replace")
    return len(text.encode()), text


PARTIAL_HEAD = b"GET /v1/version HTTP/1.1\r\nHost: ketchd\r\nX-Slow: "


def test_1000_slow_connections_at_a_lowered_fd_limit_do_not_hold_the_daemon(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(_limit_fds, KETCH_HEAD_TIMEOUT="3", KETCH_IDLE_TIMEOUT="3")
    socks = _slow_connections(daemon.socket, 1000, PARTIAL_HEAD)
    try:
        # While they hold on: the CLI's list answers (slow clients make way for it).
        listed = Ketch(daemon.root).run("list", "--format", "json", timeout=WAIT)
        assert json.loads(listed.stdout) == {"list": []}
        _wait_all_closed(socks)  # every slow one is dropped (evicted, or at its timeout)
    finally:
        for s in socks:
            s.close()
    assert daemon.get("/v1/version")[0] == 200
    size, text = _log_facts(daemon.log)
    assert "Traceback" not in text
    assert size < 64 * 1024, text[-2000:]


def test_at_the_fd_limit_accept_errors_are_a_few_lines_and_the_daemon_recovers(
    start_daemon: Callable[..., Daemon],
) -> None:
    # A cap above what the fds allow: ketchd runs out of fds while accepting.
    daemon = start_daemon(
        _limit_fds, KETCH_HEAD_TIMEOUT="3", KETCH_IDLE_TIMEOUT="3", KETCH_MAX_CONNECTIONS="5000"
    )
    socks = _slow_connections(daemon.socket, 1000, PARTIAL_HEAD)
    try:
        listed = Ketch(daemon.root).run("list", "--format", "json", timeout=WAIT)
        assert json.loads(listed.stdout) == {"list": []}
        _wait_all_closed(socks)
    finally:
        for s in socks:
            s.close()
    size, text = _log_facts(daemon.log)
    assert "Too many open files" in text  # the attack did reach the limit
    assert "Traceback" not in text
    assert text.count("cannot accept a connection") <= 10
    assert size < 64 * 1024, text[-2000:]


def test_a_head_trickled_one_byte_at_a_time_is_dropped(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(KETCH_HEAD_TIMEOUT="2", KETCH_IDLE_TIMEOUT="30")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(daemon.socket)
    sent = 0
    head = PARTIAL_HEAD * 20  # longer than anything sent in the timeout
    try:
        for byte in head:
            s.send(bytes([byte]))
            sent += 1
            time.sleep(0.2)  # each byte well within the idle timeout
            s.setblocking(False)
            if _closed_by_server(s):
                break
            s.setblocking(True)
        else:
            raise AssertionError("a trickled head was never dropped")
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        s.close()
    assert sent < len(head)
    assert daemon.get("/v1/version")[0] == 200


def test_an_idle_connection_and_an_unfinished_body_are_dropped(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(KETCH_IDLE_TIMEOUT="2", KETCH_BODY_TIMEOUT="2")
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(daemon.socket)
    body = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    body.connect(daemon.socket)
    body.sendall(
        b"POST /v1/instances HTTP/1.1\r\nHost: ketchd\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"name": '
    )
    for s in (idle, body):
        s.settimeout(WAIT)
        assert s.recv(4096) == b""  # closed by ketchd, without an answer
        s.close()
    _size, text = _log_facts(daemon.log)
    assert "Traceback" not in text
    assert daemon.get_json("/v1/instances") == (200, {"list": [], "hosts": 1})


def test_when_every_connection_is_busy_a_new_one_gets_a_clean_503(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(KETCH_MAX_CONNECTIONS="3", KETCH_BODY_TIMEOUT="60")
    before = _sockets(daemon.proc.pid)
    busy = []
    for _ in range(3):  # a request in progress each: its body is still coming
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(daemon.socket)
        s.sendall(b"POST /v1/instances HTTP/1.1\r\nHost: ketchd\r\nContent-Length: 100\r\n\r\n{")
        busy.append(s)
    try:
        # ketchd has accepted all three (polled: a fixed half second was a guess that
        # a busy host could miss); it reads their heads before it could read a fourth.
        deadline = time.monotonic() + WAIT
        while len(_sockets(daemon.proc.pid) - before) < 3:
            assert time.monotonic() < deadline, "ketchd did not accept the connections"
            time.sleep(0.02)
        done = Ketch(daemon.root).run("list", check=False, timeout=WAIT)
        assert done.returncode == 3, done.stderr
        assert "ketchd is busy: 3 connections" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        for s in busy:
            s.close()
    assert daemon.get_json("/v1/instances") == (200, {"list": [], "hosts": 1})


# -- item 4 ---------------------------------------------------------------------------------


def test_the_alias_bomb_is_refused_and_ketchd_memory_stays_bounded(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon()
    payload = base64.b64encode(gzip.compress(b"\0" * (64 * MiB))).decode()
    bomb = (
        "#cloud-config\nwrite_files:\n"
        f"  - &f {{path: /a, encoding: gz+b64, content: {payload}}}\n" + "  - *f\n" * 10
    )
    assert len(bomb) < 90_000  # the 87 KB file
    before = daemon.rss_kib()
    done = Ketch(daemon.root).run(
        "launch", "--name", "bomb", "--cloud-init", "-", input=bomb.encode(), check=False
    )
    after = daemon.rss_kib()
    assert done.returncode == 1, done.stderr
    assert "write_files contents decode to more than 16777216 bytes" in done.stderr
    assert after - before < 100 * 1024, (before, after)  # KiB; unbounded it was +600 MB
    assert daemon.get_json("/v1/instances") == (200, {"list": [], "hosts": 1})


def test_a_large_cloud_init_being_parsed_does_not_block_other_clients(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon()
    # ~190 000 nodes (seconds of YAML work), invalid at its very end: refused, no VM.
    doc = "#cloud-config\npackages:\n" + "- a\n" * 190_000 + "oops: [\n"
    assert 700_000 < len(doc) < MiB  # under the request-size limit of any branch
    body = json.dumps({"name": "big", "cloud_init": doc}).encode()
    launched = threading.Event()
    answer: list[bytes] = []

    def launch() -> None:
        resp = request(daemon.socket, "POST", "/v1/instances", body, WAIT)
        answer.append(resp.read())
        launched.set()

    worker = threading.Thread(target=launch)
    worker.start()
    answered = 0
    while not launched.is_set():
        if daemon.get("/v1/version")[0] == 200 and not launched.is_set():
            answered += 1
    worker.join(WAIT)
    assert b"not valid YAML" in answer[0]
    # On the loop, the parse held every other client until it ended (the issue:
    # 7 s for an 889 KB file); off it, ketchd keeps answering meanwhile.
    assert answered >= 20, answered
