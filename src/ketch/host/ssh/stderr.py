"""Reading what ``ssh`` says: its exit code and stderr tell a host-key failure
and a session that could not be set up from the remote command's own output."""

from __future__ import annotations

from ketch.errors import GuestError
from ketch.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from ketch.sshtarget import SshTarget

# ssh exits 255 when it (not the remote command) failed.
SSH_FAILED = 255

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
