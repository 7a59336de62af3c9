"""``local.passphrase``, stored hashed (scrypt, a random salt), never in clear.  Pure.

The stored form is ``scrypt$N$r$p$SALT$HASH`` (salt and hash in base64);
:func:`verify` compares in constant time.  Hashing costs tens of
milliseconds and 16 MiB on purpose: ketchd runs it off its event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

PREFIX = "scrypt"
N, R, P = 2**14, 8, 1  # 16 MiB, ~40 ms: costly to guess offline, cheap to check once
LENGTH = 32
MAXMEM = 64 * 1024**2


def hash_passphrase(passphrase: str, *, salt: bytes | None = None) -> str:
    """The stored form of ``passphrase``."""
    salt = salt if salt is not None else os.urandom(16)
    digest = _scrypt(passphrase, salt, N, R, P)
    b64 = base64.b64encode
    return f"{PREFIX}${N}${R}${P}${b64(salt).decode()}${b64(digest).decode()}"


def is_hashed(stored: str | None) -> bool:
    """Whether ``stored`` is a hash made by :func:`hash_passphrase`."""
    return bool(stored) and str(stored).startswith(PREFIX + "$") and str(stored).count("$") == 5


def verify(passphrase: str, stored: str | None) -> bool:
    """Whether ``passphrase`` is the one ``stored`` was made from (False when none is set)."""
    if not is_hashed(stored):
        return False
    assert stored is not None
    _, n, r, p, salt, digest = stored.split("$")
    try:
        expected = base64.b64decode(digest, validate=True)
        got = _scrypt(passphrase, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(expected, got)


def _scrypt(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    data = passphrase.encode("utf-8", "surrogateescape")
    return hashlib.scrypt(data, salt=salt, n=n, r=r, p=p, maxmem=MAXMEM, dklen=LENGTH)
