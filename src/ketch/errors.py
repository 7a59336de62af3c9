"""The one exception root of ketch, with stable codes, hints and exit codes.

Foreign errors (OSError, subprocess failures, QMP errors, HTTP errors) are
translated into these once, at the boundary where they happen, with
``raise ... from exc``.  ``asyncio.CancelledError`` is never wrapped.

Exit codes follow Canonical Multipass: 0 ok, 1 command-line error,
2 command failed, 3 daemon unreachable, 5 timeout.
"""

from __future__ import annotations

from collections.abc import Iterable

from ketch.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_FAILED = 2
EXIT_DAEMON = 3
EXIT_TIMEOUT = 5


class KetchError(Exception):
    """Root of every error ketch raises on purpose.

    ``code`` is stable and machine readable; ``message`` says what went
    wrong; ``hint`` says what the user can do about it.
    """

    code: str = "failed"
    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, Any]:
        """The wire form used by the daemon's API."""
        return {
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.exit_code,
        }

    def __str__(self) -> str:
        return self.message


class UsageError(KetchError):
    """The command line or a request was malformed."""

    code = "usage"
    exit_code = EXIT_USAGE


class InvalidArgument(UsageError):
    """A value (name, size, setting, cloud-init file ...) is not acceptable."""

    code = "invalid-argument"


class TooLarge(InvalidArgument):
    """A request (body) is larger than the limit that applies to it."""

    code = "too-large"


class NotFound(KetchError):
    """An instance, image, snapshot or setting does not exist."""

    code = "not-found"


class AlreadyExists(KetchError):
    """A name is already taken."""

    code = "already-exists"


class InvalidState(KetchError):
    """An operation was asked of an instance in a state it does not accept."""

    code = "invalid-state"

    def __init__(
        self,
        name: str,
        current: str,
        accepted: Iterable[str],
        *,
        message: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.name = name
        self.current = current
        self.accepted = tuple(accepted)
        text = message or (
            f'instance "{name}" is {current}; this needs it to be ' + " or ".join(self.accepted)
        )
        super().__init__(text, hint=hint)


class Deleted(InvalidState):
    """The instance is soft-deleted (Multipass wording kept for scripts)."""

    code = "deleted"

    def __init__(self, name: str) -> None:
        super().__init__(
            name,
            "Deleted",
            ("not Deleted",),
            message=f"Instance '{name}' is deleted.",
            hint=f"use 'ketch recover {name}' to bring it back, or 'ketch purge' to remove it",
        )


class Timeout(KetchError):
    """Something did not finish in the time it was given."""

    code = "timeout"
    exit_code = EXIT_TIMEOUT


class NoSpace(KetchError):
    """The storage root's filesystem has not enough free space for what was asked."""

    code = "no-space"


class DaemonUnreachable(KetchError):
    """The CLI could not reach (or start) ketchd."""

    code = "daemon-unreachable"
    exit_code = EXIT_DAEMON


class HostCommandError(KetchError):
    """An external program (qemu-img, qemu, ssh-keygen, apt-get ...) failed."""

    code = "host-command"

    def __init__(
        self,
        argv: list[str],
        returncode: int | None,
        stderr: str,
        *,
        hint: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        prog = argv[0].rsplit("/", 1)[-1] if argv else "command"
        how = "could not be run" if returncode is None else f"exited {returncode}"
        detail = f": {self.stderr}" if self.stderr else ""
        super().__init__(f"{prog} {how}{detail}", hint=hint)


class ImageError(KetchError):
    """An image could not be found, fetched, verified or built."""

    code = "image"


class DigestMismatch(ImageError):
    """A download's sha256 did not match the catalogue's."""

    code = "digest-mismatch"

    def __init__(self, what: str, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"sha256 mismatch for {what}: expected {expected}, got {actual}; "
            "the download was discarded",
            hint="try again; if it persists the remote's catalogue or mirror is broken",
        )


class QMPError(KetchError):
    """QEMU's monitor refused a command or did not answer."""

    code = "qmp"


class GuestError(KetchError):
    """The guest could not be reached or did not do what was asked."""

    code = "guest"


class HostKeyMismatch(GuestError):
    """The guest presented an SSH host key other than the pinned one."""

    code = "host-key-mismatch"

    def __init__(self, name: str) -> None:
        super().__init__(
            f'host key for "{name}" changed: the guest does not hold the key ketch pinned',
            hint="someone may be intercepting the connection, or the guest was replaced; "
            "ketch refuses to connect",
        )


class Quarantined(InvalidState):
    """ketch cannot make sense of the instance; only safe operations are allowed."""

    code = "quarantined"


class RemoteError(KetchError):
    """An error the daemon reported, rebuilt on the client side with its code."""

    def __init__(self, code: str, message: str, hint: str | None, exit_code: int) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.exit_code = exit_code


# -- remote access (issue 19: ketch/remote.py, daemon/auth.py) ------------------------------


class Unauthenticated(KetchError):
    """A remote client without a trusted certificate (HTTP 401/403): only enrolment is open."""

    code = "unauthenticated"


class RateLimited(KetchError):
    """Too many failed passphrases from one address: refused until the window passes (429)."""

    code = "rate-limited"


class ServerCertificateChanged(DaemonUnreachable):
    """The remote ketchd presents a certificate other than the one pinned on first contact."""

    code = "server-certificate-changed"


class LocalOnly(UsageError):
    """A verb (or option) that needs the daemon host's files, refused over KETCH_SERVER_ADDRESS."""

    code = "local-only"


# -- hosts (issue 20: ketch host add|list|remove) ---------------------------------------------


class InvalidHost(KetchError):
    """A host's name, URI or SSH files are refused by ketchd (exit 2, as Multipass's daemon-side
    refusals; the command line itself was well formed)."""

    code = "invalid-host"


class HostInUse(KetchError):
    """A host that still has instances cannot be removed."""

    code = "host-in-use"


class HostUnreachable(KetchError):
    """A libvirt host did not answer, or refused: the probe's reason, made short."""

    code = "host-unreachable"


class HostUnsupported(KetchError):
    """A verb or option the driver of an instance's host does not do (yet): refused before
    anything is touched, naming the host and its driver."""

    code = "host-unsupported"


class LibvirtFailed(HostCommandError):
    """A libvirt call (define a domain, upload a volume ...) failed on a reachable host.

    A :class:`HostCommandError` (code ``host-command``): libvirt stands where an external
    program would, ``argv`` is ``["libvirt", CALL]`` and ``stderr`` libvirt's reason.
    """

    def __init__(self, call: str, reason: str, *, hint: str | None = None) -> None:
        self.argv = ["libvirt", call]
        self.returncode = None
        self.stderr = reason.strip()
        KetchError.__init__(self, f"libvirt: {call} failed: {self.stderr}", hint=hint)


class Queued(KetchError):
    """``stop --force`` or ``delete --purge`` of an instance whose host does not answer: not
    done now, but queued (stored) and carried out when the host answers.  Exit 2, as
    Multipass's for a command that did not do what was asked (docs: README, Exit codes)."""

    code = "queued"
