"""The system OpenSSH client, driven as a subprocess, with the host key pinned.

ketch never imports a Python SSH stack: it builds an ``ssh`` argv (pure
functions below), runs it, and reads the outcome from the exit code and
stderr.  Every connection is pinned to one key:

* ketch generates each instance's ed25519 host key and hands it to the guest
  through cloud-init ``ssh_keys``;
* the instance's ``known_hosts`` file holds only that key, under the instance
  name as ``HostKeyAlias`` (so the forwarded port number does not matter);
* ``ssh`` runs with ``StrictHostKeyChecking=yes`` against that file alone, so
  any other key makes it fail, which :func:`is_host_key_failure` recognises
  and callers turn into :class:`ketch.errors.HostKeyMismatch`.

This module sits on the CLI hot path (``ketch exec``): it imports only the
standard library's light modules plus ``ketch.model``/``ketch.errors`` at
import time; ``asyncio`` and :mod:`ketch.host.run` are imported inside the
async functions that need them.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ketch.errors import GuestError, HostCommandError, HostKeyMismatch, InvalidArgument, Timeout
from ketch.model import SshTarget

if TYPE_CHECKING:
    from ketch.host.run import Completed
    from ketch.progress import Reporter

SSH = "ssh"
SSH_KEYGEN = "ssh-keygen"

#: The file cloud-init writes when the boot (all its stages) has finished.
BOOT_FINISHED = "/var/lib/cloud/instance/boot-finished"

#: Seconds ``ssh`` may take to set up the TCP connection (ConnectTimeout).
CONNECT_TIMEOUT = 10
#: Keepalives: a guest that stops answering for 4 x 15 s ends the session.
SERVER_ALIVE_INTERVAL = 15
SERVER_ALIVE_COUNT_MAX = 4

#: The only host key algorithm ketch accepts: the pinned key is ed25519.
HOST_KEY_ALGORITHM = "ssh-ed25519"

# ssh exits 255 when it (not the remote command) failed.
SSH_FAILED = 255

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
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")

# What OpenSSH prints (at LogLevel=ERROR) when the server's host key is not
# the pinned one.  Matched anywhere in stderr, only when ssh exited 255.
_HOST_KEY_MARKERS = (
    b"Host key verification failed",
    b"REMOTE HOST IDENTIFICATION HAS CHANGED",
    b"host key is known for",  # "No ED25519 host key is known for X and ..."
    b"you have requested strict checking",
    b"no matching host key type found",  # guest offers no ed25519 key at all
)

# Lines ssh itself prints when it could not set up a session (connection or
# authentication failures, and the host-key banners above).  The stderr
# watcher holds these back so that a failure can be reported as one clear
# ketch error instead of OpenSSH's wall of text.
_SSH_LINE_PREFIXES = (
    "@@@@",
    "@    WARNING:",
    "IT IS POSSIBLE THAT SOMEONE",
    "Someone could be eavesdropping",
    "It is also possible that a host key",
    "The fingerprint for the ",
    "SHA256:",
    "Please contact your system administrator",
    "Add correct host key in",
    "Offending ",
    "remove with:",
    'ssh-keygen -f "',
    "Host key for ",
    "Host key verification failed",
    "No ED25519 host key is known",
    "No matching host key",
    "Unable to negotiate with ",
    "ssh: connect to host ",
    "ssh: Could not resolve",
    "kex_exchange_identification:",
    "banner exchange:",
    "Connection closed by ",
    "Connection reset by ",
    "Connection timed out during banner exchange",
    "Permission denied (",
    "Received disconnect from ",
    "Disconnected from ",
    "Load key ",
    "Warning: Identity file ",
    "Too many authentication failures",
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
    if not _ALIAS.match(alias):
        raise InvalidArgument(f"not usable as a host key alias: {alias!r}")
    kind, blob = _split_public_key(public_key_line)
    return f"{alias} {kind} {blob}"


def write_known_hosts(path: Path, alias: str, public_key_line: str) -> None:
    """Write the pinned known_hosts file for one instance (atomically, mode 0600)."""
    _write_atomic(Path(path), known_hosts_line(alias, public_key_line) + "\n", 0o600)


def ssh_argv(
    target: SshTarget, remote: str | None, *, tty: bool | None, batch: bool = True
) -> list[str]:
    """The ``ssh`` argv reaching ``target``, running ``remote`` (a shell string).

    ``remote=None`` asks for a login shell.  ``tty``: True forces a
    pseudo-terminal (``-t``), False refuses one (``-T``), None lets ssh decide
    (a tty for a login shell on a terminal).  ``batch`` sets ``BatchMode``
    (never prompt); ketch authenticates with its key only, so no prompt is
    expected either way.
    """
    if not _ALIAS.match(target.name):
        raise InvalidArgument(f"not an instance name: {target.name!r}")
    if target.host.startswith("-") or not target.host:
        raise InvalidArgument(f"not a host address: {target.host!r}")
    if not 0 < target.port < 65536:
        raise InvalidArgument(f"not a port number: {target.port}")
    opts = {
        # Pinning: only the instance's own known_hosts, only its ed25519 key.
        "HostKeyAlias": target.name,
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": target.known_hosts,
        "GlobalKnownHostsFile": "/dev/null",
        "HostKeyAlgorithms": HOST_KEY_ALGORITHM,
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        # Authentication: ketch's key only, never the agent, never a password.
        "IdentityFile": target.identity,
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "PreferredAuthentications": "publickey",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "BatchMode": "yes" if batch else "no",
        # Behaviour.
        "LogLevel": "ERROR",
        "ConnectTimeout": str(CONNECT_TIMEOUT),
        "ServerAliveInterval": str(SERVER_ALIVE_INTERVAL),
        "ServerAliveCountMax": str(SERVER_ALIVE_COUNT_MAX),
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "ControlMaster": "no",
        "ControlPath": "none",
    }
    argv = [SSH, "-F", "/dev/null"]  # ignore ~/.ssh/config and /etc/ssh/ssh_config
    for key, value in opts.items():
        argv += ["-o", f"{key}={value}"]
    if tty is True:
        argv.append("-t")
    elif tty is False:
        argv.append("-T")
    argv += ["-p", str(target.port), "-l", target.user, "--", target.host]
    if remote is not None:
        argv.append(remote)
    return argv


def remote_command(argv: Sequence[str], *, workdir: str | None = None) -> str:
    """The shell string that runs ``argv`` on the guest, each argument literal.

    The guest's login shell parses the string ssh sends, so every argument is
    ``shlex.quote``d: ``'; touch /tmp/pwned'`` stays one argument.  With
    ``workdir`` the command is ``cd DIR && exec ARGV``.
    """
    if not argv:
        raise InvalidArgument("no command given", hint="name the command after '--'")
    for arg in [*argv, *([workdir] if workdir is not None else [])]:
        if "\0" in arg:
            raise InvalidArgument("a command argument contains a NUL byte")
    words = [shlex.quote(a) for a in argv]
    if words[0].startswith("-"):
        # The guest runs ``$SHELL -c STRING``: a string starting with "-" would
        # be read as an option of that shell.  Quoted, it is a command name.
        words[0] = "'" + argv[0] + "'"  # shlex.quote left it bare: no quote inside
    command = " ".join(words)
    if workdir is None:
        return command
    if not workdir:
        raise InvalidArgument("the working directory is empty")
    return f"cd {shlex.quote(workdir)} && exec {command}"


def is_host_key_failure(returncode: int, stderr: bytes) -> bool:
    """Did ssh fail because the guest's host key is not the pinned one?"""
    if returncode != SSH_FAILED:
        return False
    return any(marker in stderr for marker in _HOST_KEY_MARKERS)


def connection_failure(returncode: int, stderr: bytes) -> str | None:
    """ssh's own failure message when it could not set up a session, else None.

    Only meaningful when ``stderr`` holds nothing but ssh's own lines (as the
    :class:`StderrWatch` guarantees for what it held back).
    """
    if returncode != SSH_FAILED:
        return None
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines or not all(_is_ssh_line(ln) for ln in lines):
        return None
    return lines[-1]


def _is_ssh_line(line: str) -> bool:
    return line.startswith(_SSH_LINE_PREFIXES)


class StderrWatch:
    """Forwards ssh's stderr, holding back ssh's own failure lines.

    ssh fails (host key, connection, authentication) before the remote
    command runs, so its messages come first.  While everything seen so far
    is such a line, it is held; the first other byte (the remote program's
    own stderr, or a partial line that cannot become an ssh line) releases
    everything, after which data passes straight through.  At the end,
    :meth:`finish` tells whether ssh failed on its own, and releases held
    text otherwise.
    """

    HEAD = 1 << 16

    def __init__(self) -> None:
        self._held = bytearray()
        self._partial = bytearray()
        self._passing = False
        self._head = bytearray()  # the first HEAD bytes seen, for the final verdict
        self._began_held = False  # stderr began with an ssh line (held, then released)

    @property
    def held(self) -> bytes:
        return bytes(self._held + self._partial)

    def feed(self, data: bytes) -> bytes:
        """Take a chunk of stderr; return what to write out now."""
        if len(self._head) < self.HEAD:
            self._head += data[: self.HEAD - len(self._head)]
        if self._passing:
            return data
        self._partial += data
        while True:
            nl = self._partial.find(b"\n")
            if nl < 0:
                break
            line = bytes(self._partial[: nl + 1])
            text = line.decode("utf-8", "replace").strip()
            if text and not _is_ssh_line(text):
                return self._release()
            self._held += line
            del self._partial[: nl + 1]
        if self._partial:
            text = self._partial.decode("utf-8", "replace").lstrip()
            if text and not any(
                p.startswith(text) or text.startswith(p) for p in _SSH_LINE_PREFIXES
            ):
                return self._release()
        return b""

    def _release(self) -> bytes:
        self._began_held = self._began_held or bool(self._held)
        out = bytes(self._held + self._partial)
        self._held.clear()
        self._partial.clear()
        self._passing = True
        return out

    def finish(self, returncode: int) -> tuple[bytes, str | None, bool]:
        """``(to_write, ssh_failure, host_key_failure)`` once ssh has exited.

        ``ssh_failure`` is ssh's last message when ssh itself failed to set up
        the session (then ``to_write`` is empty: the caller reports the error).
        """
        held = self.held
        if self._passing:
            # An unexpected line released ssh's messages early; if they began
            # the output and tell of a host-key failure, that is still what happened.
            if self._began_held and is_host_key_failure(returncode, bytes(self._head)):
                return b"", None, True
        elif held:
            if is_host_key_failure(returncode, held):
                self._held.clear()
                self._partial.clear()
                return b"", None, True
            failure = connection_failure(returncode, held)
            if failure is not None:
                self._held.clear()
                self._partial.clear()
                return b"", failure, False
        return self._release(), None, False


def ssh_failure_error(target: SshTarget, message: str) -> GuestError:
    """The ketch error for an ssh session that could not be set up."""
    if "Permission denied" in message:
        hint = "the guest did not accept ketch's key; was the instance launched by ketch?"
    else:
        hint = f"is the instance running? try 'ketch info {target.name}'"
    return GuestError(f'cannot reach "{target.name}" over SSH: {message}', hint=hint)


async def run_in_guest(
    target: SshTarget,
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    timeout: float = 60.0,
    check: bool = False,
) -> Completed:
    """Run ``argv`` in the guest (no tty, batch mode) and capture its output.

    The returned :class:`~ketch.host.run.Completed` carries the remote exit
    code (255 also when ssh itself failed).  A host-key failure raises
    :class:`HostKeyMismatch`; with ``check`` any other failure raises
    :class:`GuestError`.  On timeout ssh is killed and ``Timeout`` raised.
    """
    from ketch.host.run import run

    done = await run(
        ssh_argv(target, remote_command(argv), tty=False, batch=True),
        timeout=timeout,
        check=False,
        input=input,
    )
    if is_host_key_failure(done.returncode, done.stderr):
        raise HostKeyMismatch(target.name)
    if check and done.returncode != 0:
        failure = connection_failure(done.returncode, done.stderr)
        if failure is not None:
            raise ssh_failure_error(target, failure)
        detail = done.stderr.decode("utf-8", "replace").strip()
        raise GuestError(
            f"{shlex.join(argv)} exited {done.returncode} in {target.name}"
            + (f": {detail}" if detail else "")
        )
    return done


BANNER_TRY = 0.5  # seconds one banner probe may wait (a hung try costs this much)


async def read_banner(host: str, port: int, *, timeout: float) -> str:
    """Connect to ``host:port`` and return the SSH identification line sent.

    Raises OSError (refused, reset, closed without banner) or TimeoutError.
    Lines before the ``SSH-`` line are allowed by RFC 4253 and skipped.
    """
    import asyncio

    async def banner() -> str:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for _ in range(20):
                line = await reader.readline()
                if not line:
                    raise ConnectionResetError("connection closed before an SSH banner")
                if line.startswith(b"SSH-"):
                    return line.decode("ascii", "replace").strip()
            raise ConnectionError("no SSH banner in the first lines")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.wait_for(banner(), timeout)


async def wait_ready(
    target: SshTarget,
    *,
    timeout: float,
    reporter: Reporter,
    abort: Callable[[], Awaitable[str | None]] | None = None,
) -> None:
    """Wait until the guest answers SSH with the pinned key and cloud-init is done.

    1. The forwarded port must send an ``SSH-`` banner (QEMU user networking
       accepts TCP on the host port before anything listens in the guest).
    2. ``test -f /var/lib/cloud/instance/boot-finished`` must succeed over ssh.

    Raises :class:`Timeout` (saying what was last seen) when ``timeout``
    seconds pass, and :class:`HostKeyMismatch` at once on a host-key failure.
    ``abort``, called about once a second, returns a reason to stop waiting
    (QEMU exited, the guest is paused): then :class:`GuestError` is raised.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = "nothing yet"
    checked = loop.time()

    def remaining() -> float:
        return deadline - loop.time()

    async def check() -> None:
        nonlocal checked
        if abort is None or loop.time() - checked < 1.0:
            return
        checked = loop.time()
        reason = await abort()
        if reason:
            raise GuestError(
                f'"{target.name}" will not become ready: {reason}',
                hint=f"see 'ketch info {target.name}' and the instance's serial.log",
            )

    reporter.step(f"Waiting for SSH on {target.host}:{target.port}")
    while True:
        left = remaining()
        if left <= 0:
            raise _not_ready(target, timeout, last)
        await check()
        try:
            # Short tries: a connection made before the guest's network is up
            # is accepted by QEMU's user networking but never answered.
            banner = await read_banner(target.host, target.port, timeout=min(BANNER_TRY, left))
            break
        except TimeoutError:
            last = "the SSH port accepted a connection but sent no banner"
        except ConnectionRefusedError:
            last = f"connection to {target.host}:{target.port} refused"
        except OSError as exc:
            last = f"{target.host}:{target.port}: {exc.strerror or exc}"
        await asyncio.sleep(min(0.1, max(remaining(), 0)))

    reporter.step(f"Waiting for cloud-init to finish ({banner})")
    from ketch.host.run import run

    argv = ssh_argv(target, remote_command(["test", "-f", BOOT_FINISHED]), tty=False, batch=True)
    while True:
        left = remaining()
        if left <= 0:
            raise _not_ready(target, timeout, last)
        await check()
        try:
            done = await run(argv, timeout=max(min(30.0, left), 1.0), check=False)
        except Timeout:
            last = "ssh did not answer in time"
        else:
            if done.returncode == 0:
                return
            if is_host_key_failure(done.returncode, done.stderr):
                raise HostKeyMismatch(target.name)
            err = done.stderr.decode("utf-8", "replace").strip().splitlines()
            if done.returncode == 1 and not err:
                last = f"{BOOT_FINISHED} not there yet (cloud-init still running)"
            else:
                last = f"ssh exited {done.returncode}" + (f": {err[-1]}" if err else "")
        await asyncio.sleep(min(0.25, max(remaining(), 0)))


def _not_ready(target: SshTarget, timeout: float, last: str) -> Timeout:
    return Timeout(
        f'"{target.name}" was not ready within {timeout:g} s; last seen: {last}',
        hint=f"the guest's console log may tell why (serial.log in the instance directory "
        f"of {target.name})",
    )
