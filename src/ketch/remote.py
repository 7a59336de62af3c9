"""The CLI's side of remote access: HTTP over TLS to the ketchd at ``KETCH_SERVER_ADDRESS``.

Imported only when that variable is set (``ssl`` and ``cryptography`` stay
off the local hot path).  Each request is one TLS 1.3 connection:

* the client presents its certificate (``client.crt`` in ketch's config
  directory, made by the first ``ketch authenticate``) when it has one;
* before anything is sent, the server's certificate fingerprint is compared
  with the one pinned for that address in ``known_servers``: on first contact
  it is pinned and shown on stderr (as ssh does), a different one is refused
  (:class:`~ketch.errors.ServerCertificateChanged`, exit 3), nothing sent;
* a certificate the server does not trust ends the connection in the
  handshake: that is said as "not authenticated" (exit 2), with what to do.

The reply is read by :class:`ketch.transport.Response`, as on the Unix socket.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ketch import certs
from ketch.errors import DaemonUnreachable, ServerCertificateChanged, Unauthenticated
from ketch.layout import CLIENT_CERT, CLIENT_CERT_KEY, KNOWN_SERVERS, config_dir
from ketch.netaddr import parse_address
from ketch.transport import Response

if TYPE_CHECKING:
    from ketch.client import Client

ADDRESS_ENV = "KETCH_SERVER_ADDRESS"
NOT_AUTHENTICATED = "The client is not authenticated with ketchd at {address}."
AUTH_HINT = "Please use 'ketch authenticate' before proceeding."


def address() -> str | None:
    """``$KETCH_SERVER_ADDRESS`` (HOST:PORT), or None: the local daemon."""
    return os.environ.get(ADDRESS_ENV) or None


def identity() -> tuple[str, str]:
    """The paths of the client's certificate and key."""
    home = config_dir()
    return os.path.join(home, CLIENT_CERT), os.path.join(home, CLIENT_CERT_KEY)


def ensure_identity() -> str:
    """The client's certificate (PEM), made on first use (0600, in the config directory)."""
    cert, key = identity()
    certs.ensure_pair(cert, key, f"ketch client {socket.gethostname()}")
    with open(cert) as f:
        return f.read()


def context(*, present: bool = True) -> ssl.SSLContext:
    """TLS 1.3 only; the server is checked by its pinned fingerprint, not by a CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the fingerprint pin below is the check
    cert, key = identity()
    if present and os.path.exists(cert) and os.path.exists(key):
        ctx.load_cert_chain(cert, key)
    return ctx


def known_servers() -> str:
    return os.path.join(config_dir(), KNOWN_SERVERS)


def pinned(where: str) -> str | None:
    """The fingerprint pinned for ``where`` (HOST:PORT), or None."""
    try:
        with open(known_servers()) as f:
            for line in f:
                words = line.split()
                if len(words) == 2 and words[0] == where:
                    return words[1]
    except FileNotFoundError:
        return None
    return None


def check_pin(where: str, fingerprint: str) -> None:
    """Pin on first contact (shown on stderr); refuse a changed certificate."""
    known = pinned(where)
    if known == fingerprint:
        return
    path = known_servers()
    if known is not None:
        raise ServerCertificateChanged(
            f"the certificate of ketchd at {where} changed: it presents {fingerprint}, "
            f"not {known} as pinned at first contact; nothing was sent",
            hint=f"someone may be intercepting the connection; if its certificate was made anew "
            f"on purpose, remove the line of {where} from {path} and try again",
        )
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(f"{where} {fingerprint}\n")
    print(
        f"ketch: first contact with ketchd at {where}: its certificate's fingerprint is\n"
        f"ketch:   {fingerprint}\n"
        f"ketch: pinned in {path}; a different one will be refused",
        file=sys.stderr,
    )


def request(
    where: str,
    method: str,
    target: str,
    body: bytes | None,
    timeout: float | None,
    *,
    meanwhile: Callable[[], object] | None = None,
    present: bool = True,
) -> Response:
    """One request to the ketchd at ``where`` over TLS, as :func:`ketch.transport.request`."""
    host, port = parse_address(where)
    try:
        raw = socket.create_connection((host, port), timeout=timeout or 20.0)
    except OSError as exc:
        raise DaemonUnreachable(
            f"cannot reach ketchd at {where}: {exc.strerror or exc}",
            hint=f"is ketchd there listening (local.address)? {ADDRESS_ENV} names it",
        ) from exc
    raw.settimeout(timeout)
    presented = present and os.path.exists(identity()[0])
    try:
        sock = context(present=present).wrap_socket(raw)
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        raise DaemonUnreachable(
            f"TLS with ketchd at {where} failed: {exc}",
            hint="is it a ketchd of this version (TLS 1.3) at that address?",
        ) from exc
    try:
        der = sock.getpeercert(binary_form=True)
        if der is None:
            raise DaemonUnreachable(f"ketchd at {where} presented no certificate")
        check_pin(where, certs.fingerprint(der))
        head = f"{method} {target} HTTP/1.1\r\nHost: ketchd\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        try:
            sock.sendall(head.encode("latin-1") + b"\r\n" + (body or b""))
            if meanwhile is not None:
                meanwhile()
            return Response(sock.makefile("rb"), sock)
        except OSError as exc:  # SSLError too
            if not presented:
                raise
            # ketchd ends the handshake of a certificate it does not trust (TLS 1.3: the
            # client learns it at its first read, as an alert or a closed connection).
            raise Unauthenticated(
                NOT_AUTHENTICATED.format(address=where)
                + " It does not trust this client's certificate.",
                hint=AUTH_HINT,
            ) from exc
    except BaseException:
        sock.close()
        raise


def client_request(
    client: Client,
    method: str,
    target: str,
    body: bytes | None,
    timeout: float | None,
    meanwhile: Callable[[], object] | None,
) -> Response:
    """:meth:`ketch.client.Client._request` when the client is aimed at a remote ketchd."""
    assert client.remote is not None
    try:
        return request(
            client.remote,
            method,
            target,
            body,
            timeout,
            meanwhile=meanwhile,
            present=client.present_certificate,
        )
    except OSError as exc:
        raise client._lost(exc) from exc
