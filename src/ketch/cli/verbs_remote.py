"""``ketch authenticate``, and what the other verbs do differently against a remote ketchd.

With ``KETCH_SERVER_ADDRESS=HOST:PORT`` the CLI talks to that ketchd over
TLS (:mod:`ketch.remote`).  ``authenticate`` enrols this client's
certificate (made on first use) with the passphrase; Multipass's
sentences.  Against a remote ketchd, ``exec``, ``shell`` and ``transfer``
fetch the guest's SSH key and pinned host key over the authenticated
connection (kept 0600 in ketch's config directory) and run ``ssh`` through
a tunnel in that connection (:mod:`ketch.tunnel`) to the guest's SSH port
on the daemon's host; verbs that name the daemon host's files
(``mount``, ``launch --mount``) are refused (:func:`refuse_remote`, exit 1).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from ketch.errors import InvalidArgument, LocalOnly

if TYPE_CHECKING:
    from ketch.sshtarget import SshTarget


def cmd_authenticate(args: argparse.Namespace) -> int:
    from ketch import remote
    from ketch.api import models as m
    from ketch.api import routes
    from ketch.client import Client
    from ketch.layout import storage_dir

    where = remote.address()
    if where is None:
        raise InvalidArgument(
            "authenticate enrols this client with a remote ketchd: set KETCH_SERVER_ADDRESS",
            hint="e.g. KETCH_SERVER_ADDRESS=HOST:PORT ketch authenticate; the local ketchd "
            "trusts its own user already",
        )
    secret = args.passphrase
    if secret is None:
        secret = _ask("Please enter passphrase: ")
    pem = remote.ensure_identity()
    body = m.AuthenticateBody(passphrase=secret, certificate=pem)
    daemon = Client(storage_dir())
    daemon.present_certificate = False  # not trusted yet: it would end the handshake
    daemon.call(routes.AUTHENTICATE, body)
    return 0


def _ask(prompt: str) -> str:
    if not sys.stdin.isatty():
        raise InvalidArgument(
            "no passphrase given, and there is no terminal to ask for it",
            hint="give it as an argument: ketch authenticate PASSPHRASE",
        )
    import getpass

    try:
        return getpass.getpass(prompt)
    except EOFError as exc:
        raise InvalidArgument("no passphrase given") from exc


def ask_new_passphrase() -> str:
    """``set local.passphrase`` without a value: asked twice, echoless (Multipass's prompts)."""
    first = _ask("Please enter passphrase: ")
    if _ask("Please re-enter passphrase: ") != first:
        raise InvalidArgument("Passphrases do not match. Please try again.")
    return first


def is_remote() -> bool:
    return bool(os.environ.get("KETCH_SERVER_ADDRESS"))


def refuse_remote(what: str) -> None:
    """LocalOnly (exit 1) when the CLI talks to a remote ketchd: ``what`` needs its host's files."""
    where = os.environ.get("KETCH_SERVER_ADDRESS")
    if where:
        raise LocalOnly(
            f"{what} needs the files of the host ketchd runs on, and ketchd at {where} is remote",
            hint="run it on that host (without KETCH_SERVER_ADDRESS)",
        )


def localise(target: SshTarget) -> SshTarget:
    """The remote ketchd's SSH target as this client can use it: the guest's key and pinned
    host key fetched over the authenticated connection, written 0600 under the config
    directory, and the guest's SSH port reached on the daemon's host through a local
    port of this process, tunnelled over TLS (:mod:`ketch.tunnel`)."""
    from ketch import certs
    from ketch.api import routes
    from ketch.cli import client
    from ketch.layout import REMOTE_SSH_DIR, config_dir
    from ketch.sshtarget import SshTarget

    where = os.environ["KETCH_SERVER_ADDRESS"]
    keys = client().call(routes.SSH_KEYS, name=target.name)
    here = os.path.join(config_dir(), REMOTE_SSH_DIR, where.replace("/", "_"), keys.name)
    os.makedirs(here, mode=0o700, exist_ok=True)
    identity, known = os.path.join(here, "id"), os.path.join(here, "known_hosts")
    certs.write_private(identity, keys.identity.encode())
    certs.write_private(known, keys.known_hosts.encode())
    from ketch.tunnel import forward

    port = forward(where, keys.name)  # the guest's port is on the daemon host's loopback
    return SshTarget(
        name=keys.name, host="127.0.0.1", port=port, user=keys.user, identity=identity,
        known_hosts=known,
    )  # fmt: skip
