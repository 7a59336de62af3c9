"""Issue 19, remote access, with real TLS on 127.0.0.1 against real ketchd processes.

A second storage root's CLI (its own config directory, so its own client
certificate and pinned servers) is pointed with ``KETCH_SERVER_ADDRESS`` at
a ketchd listening with ``--address``: it authenticates, launches, execs,
lists and purges.  The attacks: every call without enrolment, a client
certificate that was never enrolled, TLS 1.2, an impostor with another
certificate at a pinned address, a passphrase guessed again and again, and
connections that never finish their handshake.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ketchcli import Ketch, unique
from ports import free_port

from ketch import certs
from ketch.model import ImageInfo

WAIT = 120.0  # upper bound for waiting; never a pass criterion
PASSPHRASE = "correct horse battery staple"


def seed_vault(root: Path, tiny: ImageInfo) -> None:
    """The session's built tiny image in the daemon's vault (hard links), as conftest does."""
    src = Path(tiny.disk).parent
    dst = root / "vault" / "built" / "tiny" / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, copy_function=os.link)


@dataclass
class Server:
    root: Path
    address: str
    proc: subprocess.Popen[bytes]
    local: Ketch  # the CLI on the daemon's own host (its Unix socket)
    clients: list[Path]  # the remote CLIs' homes

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def log(self) -> str:
        return (self.root / "ketchd.log").read_text(errors="replace")

    def stop(self) -> None:
        self.local.teardown()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=WAIT)
        for path in [self.root, *self.clients]:
            shutil.rmtree(path, ignore_errors=True)


def start_server(tiny: ImageInfo | None = None, **env: str) -> Server:
    root = Path(tempfile.mkdtemp(prefix="ketch-tls-", dir="/tmp"))
    if tiny is not None:
        seed_vault(root, tiny)
    address = f"127.0.0.1:{free_port()}"
    with (root / "ketchd.log").open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ketch.daemon.main",
                "--storage",
                str(root),
                "--address",
                address,
            ],
            stdout=out,
            stderr=out,
            env={**os.environ, "KETCH_STORAGE": str(root), **env},
        )
    server = Server(root, address, proc, Ketch(root), [])
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if "TLS 1.3, client certificates" in server.log() and (root / "ketchd.sock").exists():
            return server
        assert proc.poll() is None, server.log()
        time.sleep(0.05)
    raise AssertionError(f"ketchd did not start: {server.log()}")


def remote_cli(server: Server) -> Ketch:
    """A CLI with a storage root and config directory of its own, aimed at ``server``
    (removed with the server's root)."""
    home = Path(tempfile.mkdtemp(prefix="ketch-rc-", dir="/tmp"))
    server.clients.append(home)
    k = Ketch(home / "storage")
    k.env["XDG_CONFIG_HOME"] = str(home / "config")
    k.env["KETCH_SERVER_ADDRESS"] = server.address
    return k


@pytest.fixture(scope="module")
def server(tiny_image: ImageInfo) -> Iterator[Server]:
    s = start_server(tiny_image)
    s.local.run("set", f"local.passphrase={PASSPHRASE}")
    try:
        yield s
    finally:
        s.stop()


def raw_request(
    server: Server,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    cert: tuple[str, str] | None = None,
    source: str = "127.0.0.1",
) -> tuple[int, dict[str, object]]:
    """One HTTP request over TLS 1.3 as any client could send it: status and JSON body."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(*cert)
    raw = socket.create_connection(
        ("127.0.0.1", server.port), timeout=WAIT, source_address=(source, 0)
    )
    with ctx.wrap_socket(raw) as s:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        s.sendall(head.encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head_text, _, payload = data.partition(b"\r\n\r\n")
    status = int(head_text.split(b" ", 2)[1])
    return status, json.loads(payload) if payload.startswith(b"{") else {}


def fresh_cert(tmp: Path, name: str) -> tuple[str, str]:
    cert, key = certs.make_pair(name)
    (tmp / f"{name}.crt").write_bytes(cert)
    (tmp / f"{name}.key").write_bytes(key)
    return str(tmp / f"{name}.crt"), str(tmp / f"{name}.key")


# -- refusals ---------------------------------------------------------------------------------


def test_without_enrolment_every_call_is_refused(server: Server) -> None:
    cli = remote_cli(server)
    for argv in (["list"], ["info", "x"], ["version"], ["get", "local.driver"], ["find"]):
        proc = cli.run(*argv, check=False)
        assert "not authenticated" in proc.stderr, (argv, proc.stderr)
        assert "ketch authenticate" in proc.stderr
    proc = cli.run("launch", "tiny", "--name", unique("nope"), check=False)
    assert proc.returncode == 2 and "not authenticated" in proc.stderr
    # Every route, as raw requests without a client certificate: 401, nothing done.
    from ketch.api.routes import ROUTES
    from ketch.daemon.tunnel import TUNNEL_PATH

    tunnel = ("GET", TUNNEL_PATH)  # the SSH tunnel (a WebSocket) is behind the same gate
    for method, template in [*((r.method, r.path) for r in ROUTES), tunnel]:
        if template == "/v1/authenticate":
            continue
        path = template.replace("{name}", "x").replace("{snapshot}", "s")
        path = path.replace("{key}", "local.driver").replace("{id}", "1")
        status, doc = raw_request(server, method, path, b"{}")
        assert status == 401, (template, status, doc)
        assert doc["error"]["code"] == "unauthenticated"  # type: ignore[index]
    assert not (server.root / "instances").exists() or not any(
        (server.root / "instances").iterdir()
    )


def test_a_client_certificate_never_enrolled_is_refused_in_the_handshake(
    server: Server, tmp_path: Path
) -> None:
    cert = fresh_cert(tmp_path, "stranger")
    with pytest.raises((ssl.SSLError, OSError, IndexError, ValueError)):
        raw_request(server, "GET", "/v1/instances", cert=cert)
    # The CLI says so (a certificate of its own it never enrolled).
    cli = remote_cli(server)
    config = Path(cli.env["XDG_CONFIG_HOME"]) / "ketch"
    config.mkdir(parents=True)
    shutil.copy(cert[0], config / "client.crt")
    shutil.copy(cert[1], config / "client.key")
    proc = cli.run("list", check=False)
    assert proc.returncode == 2
    assert "does not trust this client's certificate" in proc.stderr
    assert "ketch authenticate" in proc.stderr


def test_tls_below_1_3_is_refused(server: Server) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    with pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw)
    raw.close()


def test_wrong_passphrases_are_rate_limited_per_address(server: Server, tmp_path: Path) -> None:
    """From 127.0.0.2: five wrong, then even the right one is refused (429); 127.0.0.1 is not."""
    pem = Path(fresh_cert(tmp_path, "guesser")[0]).read_text()

    def attempt(secret: str) -> tuple[int, dict[str, object]]:
        body = json.dumps({"passphrase": secret, "certificate": pem}).encode()
        return raw_request(server, "POST", "/v1/authenticate", body, source="127.0.0.2")

    for i in range(5):
        status, doc = attempt(f"guess {i}")
        assert status == 401, doc
        assert doc["error"]["message"] == "Passphrase is not correct. Please try again."  # type: ignore[index]
    status, doc = attempt(PASSPHRASE)
    assert status == 429, doc
    assert "too many failed passphrases from 127.0.0.2" in doc["error"]["message"]  # type: ignore[index]
    # The guesser's certificate was not enrolled.
    trusted = server.root / "tls" / "trusted-clients.pem"
    assert not trusted.exists() or certs.pem_fingerprint(pem) not in {
        certs.pem_fingerprint(p) for p in certs.split_pem(trusted.read_bytes())
    }


def test_the_dashboard_is_served_with_a_passphrase_login(server: Server) -> None:
    """ketchd's own listener serves the page: the login, its session, the API with the secret."""
    import http.client
    import urllib.parse

    def send(method: str, path: str, body: bytes = b"", **headers: str) -> http.client.HTTPResponse:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(
            "127.0.0.1", server.port, timeout=WAIT, context=ctx, source_address=("127.0.0.3", 0)
        )
        conn.request(
            method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()}
        )
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return resp

    assert send("GET", "/").getheader("Location") == "/login"
    page = send("GET", "/login")
    assert page.status == 200 and page.getheader("Content-Type", "").startswith("text/html")
    origin = f"https://127.0.0.1:{server.port}"
    form = {"Content_Type": "application/x-www-form-urlencoded", "Origin": origin}
    wrong = urllib.parse.urlencode({"passphrase": "not it"}).encode()
    assert send("POST", "/login", wrong, **form).status == 401
    right = urllib.parse.urlencode({"passphrase": PASSPHRASE}).encode()
    login = send("POST", "/login", right, **form)
    assert login.status == 303, login.status
    csrf = (login.getheader("Location") or "").split("#s=", 1)[1]
    cookie = login.getheader("Set-Cookie") or ""
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    session = cookie.split(";", 1)[0]
    listed = send("GET", "/v1/instances", Cookie=session, X_Ketch_CSRF=csrf)
    assert listed.status == 200
    assert send("GET", "/v1/instances", Cookie=session).status == 403  # no secret
    assert send("GET", "/v1/instances", Cookie=session, X_Ketch_CSRF=csrf, Host="x").status == 403


def test_a_changed_server_certificate_is_refused_and_nothing_is_sent(
    server: Server, tmp_path: Path
) -> None:
    """An impostor with another certificate where the client pinned ketchd's: refused."""
    cert, key = fresh_cert(tmp_path, "impostor")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as s:
                s.settimeout(10)
                try:
                    while chunk := s.recv(4096):
                        received.append(chunk)
                except (OSError, ssl.SSLError):
                    pass
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    cli = remote_cli(server)
    cli.env["KETCH_SERVER_ADDRESS"] = f"127.0.0.1:{port}"
    config = Path(cli.env["XDG_CONFIG_HOME"]) / "ketch"
    config.mkdir(parents=True)
    real = certs.pem_fingerprint((server.root / "tls" / "server.crt").read_bytes())
    (config / "known_servers").write_text(f"127.0.0.1:{port} {real}\n")  # pinned earlier
    proc = cli.run("authenticate", PASSPHRASE, check=False)
    thread.join(timeout=WAIT)
    listener.close()
    assert proc.returncode == 3, proc.stderr
    assert f"the certificate of ketchd at 127.0.0.1:{port} changed" in proc.stderr
    assert "nothing was sent" in proc.stderr and "known_servers" in proc.stderr
    assert b"".join(received) == b""  # not the passphrase, not a request line


# -- the whole way, with a VM ------------------------------------------------------------------


def tunnel_banner(cli: Ketch, server: Server, name: str) -> bytes:
    """The first bytes of the guest's SSH server, read through ketchd's tunnel as ``cli``."""
    import asyncio

    from ketch import tunnel

    async def read() -> bytes:
        reader, writer = await tunnel.open_tunnel(server.address, name)
        _, data = await tunnel.read_frame(reader)
        writer.close()
        return data

    saved = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = cli.env["XDG_CONFIG_HOME"]
    try:
        return asyncio.run(read())
    finally:
        if saved is None:
            del os.environ["XDG_CONFIG_HOME"]
        else:
            os.environ["XDG_CONFIG_HOME"] = saved


@pytest.mark.vm
def test_a_remote_cli_authenticates_launches_execs_lists_and_purges(server: Server) -> None:
    cli = remote_cli(server)
    proc = cli.run("authenticate", "not it", check=False)
    assert proc.returncode == 2
    assert "Passphrase is not correct. Please try again." in proc.stderr
    # The first contact pinned the server's certificate and showed it.
    real = certs.pem_fingerprint((server.root / "tls" / "server.crt").read_bytes())
    assert real in proc.stderr
    pinned = (Path(cli.env["XDG_CONFIG_HOME"]) / "ketch" / "known_servers").read_text()
    assert pinned == f"{server.address} {real}\n"
    cli.run("authenticate", PASSPHRASE)
    client_cert = Path(cli.env["XDG_CONFIG_HOME"]) / "ketch" / "client.crt"
    assert oct(client_cert.stat().st_mode & 0o777) == "0o600"
    assert oct((server.root / "tls" / "server.key").stat().st_mode & 0o777) == "0o600"
    assert cli.run("get", "local.passphrase").stdout == "true\n"
    assert PASSPHRASE not in (server.root / "settings.json").read_text()

    name = unique("remote")
    cli.run("launch", "tiny", "--name", name, "--memory", "512M", timeout=600)
    try:
        out = cli.run("exec", name, "--", "sh", "-c", "echo hello from $(hostname)").stdout
        assert out == f"hello from {name}\n"
        # exec went through ketchd: the guest's SSH server answers through the tunnel.
        assert tunnel_banner(cli, server, name).startswith(b"SSH-2.0-")
        # Standard input and the exit status cross the tunnel too.
        piped = cli.run(
            "exec", name, "--", "sh", "-c", "cat; exit 7", input=b"x" * 200_000, check=False
        )
        assert piped.returncode == 7 and piped.stdout == "x" * 200_000
        listed = cli.json("list")["list"]
        assert [(i["name"], i["state"]) for i in listed] == [(name, "Running")]
        # The same instance, seen from the daemon's own host.
        assert server.local.state(name) == "Running"
        refused = cli.run("mount", "/tmp", f"{name}:/mnt", check=False)
        assert refused.returncode == 1
        assert "needs the files of the host ketchd runs on" in refused.stderr
        cli.run("delete", name)
        cli.run("purge")
        assert cli.json("list")["list"] == []
    finally:
        server.local.run("delete", "--purge", name, check=False)
    assert not (server.root / "instances" / name).exists()


# -- the listener's limits -----------------------------------------------------------------


def test_handshakes_that_never_finish_hold_no_slot_for_ever(tmp_path: Path) -> None:
    server = start_server(None, KETCH_HEAD_TIMEOUT="2", KETCH_MAX_CONNECTIONS="4")
    try:
        stalled = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
        stalled[0].sendall(b"\x16\x03\x01\x00")  # the start of a ClientHello, then nothing
        # A fifth while four handshakes are in progress: closed at once.
        extra = socket.create_connection(("127.0.0.1", server.port))
        extra.settimeout(WAIT)
        with contextlib.suppress(ConnectionResetError):
            assert extra.recv(1) == b""
        extra.close()
        for s in stalled:  # each is closed by ketchd at its handshake deadline
            s.settimeout(WAIT)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(1) == b""
            s.close()
        # And then a client is served (401: it has no certificate, but it got an answer).
        status, doc = raw_request(server, "GET", "/v1/instances")
        assert status == 401, doc
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_setting_local_address_moves_the_listener_at_once() -> None:
    server = start_server(None)
    try:
        server.local.run("set", f"local.passphrase={PASSPHRASE}")
        cli = remote_cli(server)
        cli.run("authenticate", PASSPHRASE)
        assert cli.json("list") == {"list": []}
        new = f"127.0.0.1:{free_port()}"
        server.local.run("set", f"local.address={new}")
        assert server.local.run("get", "local.address").stdout == f"{new}\n"
        refused = cli.run("list", check=False)  # the old address: nobody listens
        assert refused.returncode == 3 and "cannot reach ketchd" in refused.stderr
        cli.env["KETCH_SERVER_ADDRESS"] = new
        assert cli.json("list") == {"list": []}  # same certificate: pinned anew for this address
        # An address it cannot take is refused, and the listener stays where it is.
        with socket.create_server(("127.0.0.1", 0)) as taken:
            busy = f"127.0.0.1:{taken.getsockname()[1]}"
            proc = server.local.run("set", f"local.address={busy}", check=False)
            assert proc.returncode == 2 and f"cannot listen on {busy}" in proc.stderr
        assert server.local.run("get", "local.address").stdout == f"{new}\n"
        assert cli.json("list") == {"list": []}
        server.local.run("set", "local.address=")  # unset: no TCP at all
        assert cli.run("list", check=False).returncode == 3
    finally:
        server.stop()
