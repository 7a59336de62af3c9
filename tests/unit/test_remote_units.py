"""Remote access's pure parts: passphrase hashes, addresses, pins, the failed-attempts window."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from fakes import FakeClock

from ketch import certs, passphrase, remote
from ketch.daemon.auth import Attempts, Trust
from ketch.errors import InvalidArgument, RateLimited, ServerCertificateChanged
from ketch.layout import Root
from ketch.netaddr import parse_address


def test_a_passphrase_is_stored_as_a_salted_scrypt_hash_and_verified() -> None:
    stored = passphrase.hash_passphrase("sesame")
    assert "sesame" not in stored and stored.startswith("scrypt$16384$8$1$")
    assert passphrase.is_hashed(stored)
    assert passphrase.verify("sesame", stored)
    assert not passphrase.verify("Sesame", stored)
    assert passphrase.hash_passphrase("sesame") != stored  # a new salt each time
    for broken in (None, "", "sesame", "scrypt$1$2$3$!!$!!", stored[:-4]):
        assert not passphrase.verify("sesame", broken)


@pytest.mark.parametrize(
    ("text", "pair"),
    [("127.0.0.1:7341", ("127.0.0.1", 7341)), ("[::1]:80", ("::1", 80)), ("host:1", ("host", 1))],
)
def test_addresses_are_host_and_port(text: str, pair: tuple[str, int]) -> None:
    assert parse_address(text) == pair


@pytest.mark.parametrize("text", ["", "7341", "host:", ":80", "host:0", "host:65536", "h:x"])
def test_a_bad_address_says_how_to_write_one(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_address(text)
    assert info.value.hint is not None and "HOST:PORT" in info.value.hint


def test_failed_passphrases_are_counted_per_address_in_a_window() -> None:
    clock = FakeClock()
    attempts = Attempts(limit=3, window=60.0, clock=clock)
    for _ in range(3):
        attempts.check("10.0.0.1")
        attempts.failed("10.0.0.1")
    with pytest.raises(RateLimited) as info:
        attempts.check("10.0.0.1")
    assert "10.0.0.1" in info.value.message
    attempts.check("10.0.0.2")  # another address is not held back
    clock.advance(61.0)
    attempts.check("10.0.0.1")  # the window has passed
    attempts.failed("10.0.0.1")
    attempts.succeeded("10.0.0.1")
    assert "10.0.0.1" not in attempts.failures


def test_the_first_contact_pins_and_a_changed_fingerprint_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    remote.check_pin("127.0.0.1:1", "SHA256:AA")
    assert "SHA256:AA" in capsys.readouterr().err
    known = tmp_path / "ketch" / "known_servers"
    assert known.read_text() == "127.0.0.1:1 SHA256:AA\n"
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    remote.check_pin("127.0.0.1:1", "SHA256:AA")  # the same: silent
    assert capsys.readouterr().err == ""
    with pytest.raises(ServerCertificateChanged) as info:
        remote.check_pin("127.0.0.1:1", "SHA256:BB")
    assert info.value.exit_code == 3 and "nothing was sent" in info.value.message
    assert info.value.hint is not None and str(known) in info.value.hint
    remote.check_pin("127.0.0.1:2", "SHA256:BB")  # another address: its own pin


def test_certificates_are_made_0600_and_enrolled_by_fingerprint(tmp_path: Path) -> None:
    root = Root(tmp_path)
    cert, key = str(root.tls_cert), str(root.tls_key)
    assert certs.ensure_pair(cert, key, "ketchd")
    assert not certs.ensure_pair(cert, key, "ketchd")  # kept, not made again
    for path in (cert, key):
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    client_pem, _ = certs.make_pair("client")
    trust = Trust(root)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    trust.add_to(context)
    fp = trust.enrol(client_pem.decode())
    assert fp == certs.pem_fingerprint(client_pem) and fp.startswith("SHA256:")
    assert context.cert_store_stats()["x509_ca"] == 1  # the running listener learnt it
    assert Trust(root).fingerprints == {fp}  # and it is kept
    assert oct(root.tls_clients.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(InvalidArgument):
        trust.enrol("not a certificate")
    with pytest.raises(InvalidArgument):
        trust.enrol(client_pem.decode() * 2)


@pytest.mark.parametrize("remote_address", [None, "127.0.0.1:1"])
def test_ssl_is_imported_only_with_a_server_address(
    tmp_path: Path, remote_address: str | None
) -> None:
    """The local hot path (``ketch list``) never loads ssl nor the remote client."""
    import subprocess
    import sys

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # a storage root that cannot exist: the contact fails, exit 3
    env = {k: v for k, v in os.environ.items() if k != "KETCH_SERVER_ADDRESS"}
    env.update(KETCH_STORAGE=str(blocker / "storage"), XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    if remote_address is not None:
        env["KETCH_SERVER_ADDRESS"] = remote_address  # nothing listens on port 1
    code = (
        "import sys\nfrom ketch.cli.main import main\ncode = main(['list'])\n"
        "print(code, 'ssl' in sys.modules, 'ketch.remote' in sys.modules, "
        "'cryptography' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    remote_used = str(remote_address is not None)
    assert done.stdout.split() == ["3", remote_used, remote_used, "False"], done.stderr
    if remote_address is not None:
        assert "cannot reach ketchd at 127.0.0.1:1" in done.stderr
