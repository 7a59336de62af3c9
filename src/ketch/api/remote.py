"""The API's models for remote access: enrolment, and what a remote ``exec`` needs.

Part of :mod:`ketch.api.models`, which re-exports every name here; import
them from there (it imports msgspec first, lightly: see its docstring).
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from ketch.api.common import Body, Reply, Text

MAX_CERTIFICATE = 16 * 1024  # characters of one PEM certificate


class AuthenticateBody(Body):
    passphrase: Text
    certificate: Annotated[str, Meta(max_length=MAX_CERTIFICATE)]  # PEM, the client's own


class AuthenticateReply(Reply):
    fingerprint: str  # of the certificate now trusted


class SshKeysReply(Reply):
    """The guest's SSH material for a client on another host (it has not the daemon's files)."""

    name: str
    port: int  # the guest's SSH port on the daemon's host
    user: str
    identity: str  # the client private key (OpenSSH PEM): a trusted client may use the guest
    known_hosts: str  # the instance's pinned known_hosts line(s)
