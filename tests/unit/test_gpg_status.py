"""ketch.host.gpg: argv and the parse of gpgv's status lines, on recorded output."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch.host.gpg import parse_status, verify_argv

FPR = "B74A45852EA1A8795E7C98713028AD7534708B46"
# gpgv 2.2.40 (Debian 12) --status-fd 2 on a good clearsigned file.
GOOD = f"""[GNUPG:] PLAINTEXT 74 0
[GNUPG:] NEWSIG
gpgv: Signature made Tue Dec  1 19:59:37 2026 UTC
gpgv:                using EDDSA key {FPR}
[GNUPG:] KEY_CONSIDERED {FPR} 0
[GNUPG:] SIG_ID yzXRTDWwKzg/eBs2aXYfsM5cE4A 2026-12-01 1796155177
[GNUPG:] KEY_CONSIDERED {FPR} 0
[GNUPG:] GOODSIG 3028AD7534708B46 ketch test <t@example.invalid>
gpgv: Good signature from "ketch test <t@example.invalid>"
[GNUPG:] VALIDSIG {FPR} 2026-12-01 1796155177 0 4 0 22 8 01 {FPR}
""".encode()
# The same file signed by a key not in the keyring.
UNKNOWN = b"""[GNUPG:] PLAINTEXT 74 0
[GNUPG:] NEWSIG
gpgv: Signature made Tue Dec  1 19:59:37 2026 UTC
gpgv:                using EDDSA key 0123456789ABCDEF0123456789ABCDEF01234567
[GNUPG:] ERRSIG 89ABCDEF01234567 22 8 01 1796155177 9 0123456789ABCDEF0123456789ABCDEF01234567
[GNUPG:] NO_PUBKEY 89ABCDEF01234567
gpgv: Can't check signature: No public key
"""


def test_verify_argv_reads_stdin_and_uses_only_the_keyring() -> None:
    argv = verify_argv(Path("/k/ring.gpg"))
    assert argv[0] == "gpgv" and argv[-1] == "-"
    assert argv[argv.index("--keyring") + 1] == "/k/ring.gpg"
    assert argv[argv.index("--output") + 1] == "-"


def test_a_good_signature_gives_the_fingerprint() -> None:
    assert parse_status(0, GOOD) == FPR


@pytest.mark.parametrize(
    ("returncode", "status"),
    [
        (1, GOOD),  # gpgv's verdict wins
        (2, UNKNOWN),
        (0, GOOD + GOOD),  # two signatures: not one signer
        (0, GOOD.replace(b"GOODSIG", b"BADSIG")),
        (0, b""),
    ],
)
def test_anything_else_is_no_signature(returncode: int, status: bytes) -> None:
    assert parse_status(returncode, status) is None
