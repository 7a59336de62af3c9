"""A malformed daemon reply is a clear exit-3 error, never a traceback (issue 12 item 6).

A fake "daemon" on a real Unix socket answers every connection with canned
bytes: garbage, a broken HTTP head, bodies that are not JSON, JSON of the
wrong shape or with fields missing, broken chunked encoding, streams with bad
lines, unknown events or a result of the wrong shape (as an impostor daemon
would).  The real CLI (``main()``, in-process) talks to it.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.cli.main import main
from ketch.errors import EXIT_DAEMON
from ketch.layout import Root


class FakeDaemon:
    """Accepts connections on ``path``; reads the request head; answers ``reply``; closes."""

    def __init__(self, path: Path) -> None:
        self.reply = b""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDaemon]:
    short = Path(tempfile.mkdtemp(prefix="kf-", dir="/tmp"))  # AF_UNIX paths are short
    monkeypatch.setenv("KETCH_STORAGE", str(short))
    daemon = FakeDaemon(Root(short).socket)
    try:
        yield daemon
    finally:
        daemon.close()
        shutil.rmtree(short, ignore_errors=True)


def http(body: bytes, status: str = "200 OK", ctype: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def ndjson(*events: object) -> bytes:
    body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    return http(body, ctype="application/x-ndjson")


LIST_REPLIES = {
    "garbage": b"garbage\r\n\r\n",
    "nothing": b"",
    "bad-status": b"HTTP/1.1 OK fine\r\n\r\n",
    "not-json": http(b"<html>hello</html>"),
    "empty-body": http(b""),
    "wrong-shape": http(b'{"list": [{"name": 1}]}'),
    "missing-field": http(b'{"list": [{"name": "a", "state": "Running"}]}'),
    "not-an-object": http(b"[1, 2, 3]"),
    "server-error-not-json": http(b"Internal Server Error", "500 Internal Server Error"),
    "error-of-wrong-shape": http(b'{"error": "nope"}', "404 Not Found"),
    "bad-chunks": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "bad-length": b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n{}",
    "truncated": b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"list": [',
}


# Replies wrong whatever the route (the transport, JSON itself, the error's shape); exec
# decodes its reply without msgspec (ketch.api.plain), so it gets them all too.
ANY_ROUTE = (
    *("garbage", "nothing", "bad-status", "not-json", "empty-body", "not-an-object"),
    *("server-error-not-json", "bad-chunks", "bad-length", "error-of-wrong-shape"),
)
EXEC_REPLIES = {
    **{case: LIST_REPLIES[case] for case in ANY_ROUTE},
    "wrong-shape": http(b'{"name": "vm", "host": "127.0.0.1", "port": "22"}'),
    "missing-field": http(b'{"name": "vm"}'),
    "truncated": b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"name": ',
    "error-detail-of-wrong-shape": http(b'{"error": {"code": 1}}', "404 Not Found"),
}
EXEC = ["exec", "vm", "--", "true"]
MALFORMED = [(["list"], case, reply) for case, reply in sorted(LIST_REPLIES.items())] + [
    (EXEC, case, reply) for case, reply in sorted(EXEC_REPLIES.items())
]


@pytest.mark.parametrize(
    ("argv", "case", "reply"), MALFORMED, ids=[f"{a[0]}-{c}" for a, c, _ in MALFORMED]
)
def test_a_malformed_reply_is_exit_3_with_a_message(
    fake: FakeDaemon, argv: list[str], case: str, reply: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.reply = reply
    assert main(argv) == EXIT_DAEMON
    err = capsys.readouterr().err
    assert err.startswith(f"{argv[0]} failed: ") and "Traceback" not in err
    assert "ketchd" in err


@pytest.mark.parametrize(
    ("argv", "reply", "where", "what"),
    [
        (["list"], LIST_REPLIES["wrong-shape"], "$.list[0].name", "Expected str, got int"),
        (EXEC, EXEC_REPLIES["wrong-shape"], "$.port", "Expected int, got str"),
    ],
)
def test_the_message_names_the_wrong_field(
    fake: FakeDaemon,
    argv: list[str],
    reply: bytes,
    where: str,
    what: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.reply = reply
    assert main(argv) == EXIT_DAEMON
    err = capsys.readouterr().err
    assert "malformed" in err and where in err and what in err


STREAM_REPLIES = {
    "bad-line": ndjson({"type": "step", "message": "x"})[:-1] + b"\n{not json\n",
    "unknown-event": ndjson({"type": "confetti"}),
    "event-of-wrong-shape": ndjson({"type": "progress", "label": 1}),
    "impostor-result": ndjson({"type": "result", "result": {"hello": "root"}}),
    "error-event-of-wrong-shape": ndjson({"type": "error", "error": {"code": 1}}),
    "stream-ends-early": ndjson({"type": "step", "message": "Booting"}),
}


@pytest.mark.parametrize("case", sorted(STREAM_REPLIES))
def test_a_malformed_stream_is_exit_3_with_a_message(
    fake: FakeDaemon, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.reply = STREAM_REPLIES[case]
    assert main(["launch", "tiny", "--name", "web"]) == EXIT_DAEMON
    err = capsys.readouterr().err
    assert "launch failed: " in err and "Traceback" not in err


def test_an_impostors_result_is_not_a_key_error(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.reply = STREAM_REPLIES["impostor-result"]
    assert main(["launch", "tiny", "--name", "web"]) == EXIT_DAEMON
    err = capsys.readouterr().err
    assert "malformed" in err and "missing required field name" in err


def test_a_well_formed_error_is_still_the_daemons_error(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    error = {"code": "invalid-argument", "message": "no", "hint": "try", "exit_code": 1}
    fake.reply = http(json.dumps({"error": error}).encode(), "400 Bad Request")
    assert main(["list"]) == 1
    assert capsys.readouterr().err == "list failed: no\nhint: try\n"


def test_a_well_formed_error_to_exec_is_still_the_daemons_error(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    error = {"code": "not-found", "message": 'instance "vm" does not exist', "exit_code": 2}
    fake.reply = http(json.dumps({"error": error}).encode(), "404 Not Found")
    assert main(["exec", "vm", "--", "true"]) == 2
    assert capsys.readouterr().err == 'exec failed: instance "vm" does not exist\n'
