"""libvirt connection URIs as ``ketch host add`` takes them: checked, and made ready to open.

Two shapes are accepted (libvirt's own, https://libvirt.org/uri.html):

- ``qemu:///system``: the libvirtd of the daemon's machine, over its Unix socket;
- ``qemu+ssh://[USER@]HOST[:PORT]/system``: a libvirtd on another machine, through
  OpenSSH (libvirt runs ``ssh ... HOST virt-ssh-helper``, or ``nc`` on older hosts).

Anything else (another scheme or hypervisor, ``/session``, a host on ``qemu://``) is
refused with :class:`~ketch.errors.InvalidHost`, which names what is accepted.  Of the
query parameters, those ketch can pass through safely are kept (``no_verify``,
``socket``, ``mode``, ``proxy``); ``keyfile`` and ``command`` belong to ketch (``--ssh-key``
and the per-host ssh wrapper) and are refused.  Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from ketch.errors import InvalidHost

LOCAL = "qemu"
SSH = "qemu+ssh"
SCHEMES = (LOCAL, SSH)
ACCEPTED = "qemu:///system or qemu+ssh://[USER@]HOST[:PORT]/system"

# Query parameters passed to libvirt as given, with the values each accepts (None: any).
PASSED: dict[str, tuple[str, ...] | None] = {
    "no_verify": ("0", "1"),
    "socket": None,
    "mode": ("auto", "legacy", "direct"),
    "proxy": ("auto", "netcat", "native"),
}
OWNED = {
    "keyfile": "give the key with --ssh-key",
    "command": "ketch runs ssh through a wrapper of its own (the host's ssh_config)",
}
MAX_URI = 1024


@dataclass(frozen=True)
class HostUri:
    """A checked URI, in parts."""

    scheme: str
    user: str | None
    host: str | None  # None for qemu:///system
    port: int | None
    params: tuple[tuple[str, str], ...]

    @property
    def remote(self) -> bool:
        return self.scheme == SSH

    def text(self, extra: dict[str, str] | None = None) -> str:
        """The URI again (normalised), with ``extra`` query parameters added."""
        netloc = ""
        if self.host is not None:
            host = f"[{self.host}]" if ":" in self.host else self.host
            user = f"{quote(self.user, safe='')}@" if self.user else ""
            netloc = user + host + (f":{self.port}" if self.port is not None else "")
        params = [*self.params, *(extra or {}).items()]
        query = "?" + urlencode(params, safe="/") if params else ""
        return f"{self.scheme}://{netloc}/system{query}"


def _refuse(uri: str, why: str) -> InvalidHost:
    return InvalidHost(f"invalid host URI '{uri}': {why}", hint=f"give {ACCEPTED}")


def parse(uri: str) -> HostUri:
    """Check ``uri``; its parts, or InvalidHost saying what is wrong."""
    if not uri or len(uri) > MAX_URI or any(c.isspace() or ord(c) < 32 for c in uri):
        raise _refuse(uri[:80], f"empty, longer than {MAX_URI} characters, or with spaces")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise _refuse(uri, str(exc)) from exc
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        known = f"'{scheme}'" if scheme else "none"
        raise _refuse(uri, f"scheme {known} is not one ketch drives ({', '.join(SCHEMES)})")
    if parts.path != "/system":
        raise _refuse(uri, f"path '{parts.path or '/'}' is not /system (ketchd is a system "
                           "service: it drives the system libvirtd)")  # fmt: skip
    if parts.fragment:
        raise _refuse(uri, "a fragment (#...) means nothing here")
    host = parts.hostname
    if scheme == LOCAL and (parts.netloc or port is not None):
        raise _refuse(uri, "qemu:// names this machine: no host (use qemu+ssh:// for another)")
    if scheme == SSH and not host:
        raise _refuse(uri, "qemu+ssh:// needs a host")
    params: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key in OWNED:
            raise _refuse(uri, f"'{key}' is ketch's to set: {OWNED[key]}")
        if key not in PASSED:
            allowed = ", ".join(sorted(PASSED))
            raise _refuse(uri, f"query parameter '{key}' is not one ketch passes ({allowed})")
        values = PASSED[key]
        if values is not None and value not in values:
            raise _refuse(uri, f"'{key}={value}': give one of {', '.join(values)}")
        if scheme == LOCAL and key in ("no_verify", "proxy"):
            raise _refuse(uri, f"'{key}' is for qemu+ssh:// only")
        params.append((key, value))
    return HostUri(
        scheme=scheme,
        user=parts.username if scheme == SSH else None,
        host=host if scheme == SSH else None,
        port=port,
        params=tuple(params),
    )
