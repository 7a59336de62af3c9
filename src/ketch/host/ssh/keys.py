"""ketch's SSH keys: the ed25519 key pairs it generates (``ssh-keygen``) and the
pinned ``known_hosts`` file of each instance."""

from __future__ import annotations

import base64
import os
import subprocess
import tempfile
from pathlib import Path

from ketch.errors import HostCommandError, InvalidArgument, Timeout
from ketch.host.ssh.argv import ALIAS

SSH_KEYGEN = "ssh-keygen"

_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)


def generate_keypair(path: Path, comment: str) -> str:
    """Make an ed25519 key pair at ``path`` (+ ``.pub``); return the public line.

    No passphrase; the private key is mode 0600.  Idempotent: an existing key
    is kept (its ``.pub`` is re-derived if missing).  The pair is generated
    in a temporary directory beside ``path`` and moved into place, so a crash
    never leaves half a key behind.
    """
    path = Path(path)
    pub = path.with_name(path.name + ".pub")
    if path.exists():
        if not pub.exists():
            done = _run_keygen([SSH_KEYGEN, "-y", "-f", str(path)])
            line = done.stdout.decode("ascii", "replace").strip()
            _write_atomic(pub, line + "\n", 0o644)
        os.chmod(path, 0o600)
        return pub.read_text("ascii").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".keygen-", dir=path.parent) as tmp:
        key = Path(tmp) / "key"
        argv = [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)]
        _run_keygen(argv)
        os.chmod(key, 0o600)
        os.replace(key.with_name("key.pub"), pub)
        os.replace(key, path)  # last: the private key's presence means "done"
    return pub.read_text("ascii").strip()


def _run_keygen(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False
        )
    except OSError as exc:
        raise HostCommandError(argv, None, str(exc), hint="install the OpenSSH client") from exc
    except subprocess.TimeoutExpired as exc:
        raise Timeout(f"{argv[0]} did not finish within 60 s") from exc
    if done.returncode != 0:
        raise HostCommandError(argv, done.returncode, done.stderr.decode("utf-8", "replace"))
    return done


def _write_atomic(path: Path, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _split_public_key(public_key_line: str) -> tuple[str, str]:
    fields = public_key_line.split()
    if len(fields) < 2 or fields[0] not in _KEY_TYPES:
        raise InvalidArgument(f"not an OpenSSH public key line: {public_key_line[:60]!r}")
    kind, blob = fields[0], fields[1]
    try:
        raw = base64.b64decode(blob, validate=True)
    except ValueError as exc:
        raise InvalidArgument(f"public key is not valid base64: {blob[:30]!r}") from exc
    # The blob starts with the key type as an SSH string (uint32 length + bytes).
    name = kind.encode()
    if raw[:4] != len(name).to_bytes(4, "big") or raw[4 : 4 + len(name)] != name:
        raise InvalidArgument(f"public key blob does not match its type {kind}")
    return kind, blob


def known_hosts_line(alias: str, public_key_line: str) -> str:
    """The known_hosts line pinning ``public_key_line`` to ``alias`` (no newline).

    ``alias`` is the instance name, used as ``HostKeyAlias``; it must be a
    plain name (no patterns, markers or spaces).  The key's comment is dropped.
    """
    if not ALIAS.match(alias):
        raise InvalidArgument(f"not usable as a host key alias: {alias!r}")
    kind, blob = _split_public_key(public_key_line)
    return f"{alias} {kind} {blob}"


def write_known_hosts(path: Path, alias: str, public_key_line: str) -> None:
    """Write the pinned known_hosts file for one instance (atomically, mode 0600)."""
    _write_atomic(Path(path), known_hosts_line(alias, public_key_line) + "\n", 0o600)
