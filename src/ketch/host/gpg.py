"""Check OpenPGP clearsigned files (simplestreams' ``.sjson``) with ``gpgv``.

``gpgv`` verifies against one keyring file and nothing else (no trust
database, no key server).  The text ketch then uses is the one ``gpgv``
writes out as signed, never the file itself, so nothing outside the signed
block can slip in; a file with more than one signed block is refused.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ketch.errors import ImageError
from ketch.host.run import run

GPGV = "gpgv"
BEGIN = b"-----BEGIN PGP SIGNED MESSAGE-----"


@dataclass(frozen=True)
class Verified:
    """The signed text of a clearsigned file and the fingerprint of its signer."""

    text: bytes
    fingerprint: str


def available() -> bool:
    """True when ``gpgv`` is installed."""
    return shutil.which(GPGV) is not None


def verify_argv(keyring: Path) -> list[str]:
    """gpgv reading a clearsigned file on stdin, the signed text on stdout, status on stderr."""
    return [GPGV, "--keyring", str(keyring.absolute()), "--status-fd", "2", "--output", "-", "-"]


def parse_status(returncode: int, status: bytes) -> str | None:
    """The signer's fingerprint when gpgv saw exactly one good signature, else None."""
    lines = [
        line.split()
        for line in status.decode("utf-8", "replace").splitlines()
        if line.startswith("[GNUPG:] ")
    ]
    kinds = [words[1] for words in lines if len(words) > 1]
    bad = {"BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "NO_PUBKEY"}
    if returncode != 0 or bad & set(kinds) or kinds.count("GOODSIG") != 1:
        return None
    valid = [words[2] for words in lines if len(words) > 2 and words[1] == "VALIDSIG"]
    return valid[0] if len(valid) == 1 else None


async def verify(data: bytes, keyring: Path, what: str) -> Verified:
    """The signed text of ``data``; ImageError when it is not validly signed by ``keyring``."""
    if data.count(BEGIN) != 1 or not data.lstrip().startswith(BEGIN):
        raise ImageError(f"{what} is not one OpenPGP clearsigned document: refused")
    done = await run(verify_argv(keyring), input=data, check=False, timeout=120)
    fingerprint = parse_status(done.returncode, done.stderr)
    if fingerprint is None:
        said = [
            line
            for line in done.stderr.decode("utf-8", "replace").splitlines()
            if line.startswith("gpgv:")
        ]
        raise ImageError(
            f"{what} has no valid signature from a key in {keyring}: refused",
            hint="; ".join(said[-2:]) or None,
        )
    return Verified(done.stdout, fingerprint)
