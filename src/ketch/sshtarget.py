"""How a client reaches an instance over SSH: :class:`SshTarget` (plain data, no I/O).

Apart from :mod:`ketch.model` (the rest of the shared data), so ``ketch exec``,
``shell`` and ``transfer`` do not pay at every start for the model's other
classes, which they do not use (``docs/benchmarks.md``, the ``exec`` rows).  A
plain class, not a dataclass: ``dataclasses`` (with ``inspect``, which it
imports) would cost ``ketch exec`` some 9 ms of start-up.
"""

from __future__ import annotations

_FIELDS = ("name", "host", "port", "user", "identity", "known_hosts", "control_path")


class SshTarget:
    """Everything a client needs to reach an instance over SSH, host key pinned (immutable).

    * ``name``: the instance's name; also the HostKeyAlias in known_hosts;
    * ``host``, ``port``: where its SSH server answers (127.0.0.1 and a forwarded
      port with user-mode networking);
    * ``user``, ``identity``: the guest user and the client's private key file;
    * ``known_hosts``: the instance's pinned known_hosts file;
    * ``control_path``: the instance's multiplexing socket (host/ssh/master.py)
      when its master is up, else "".
    """

    __slots__ = _FIELDS
    name: str
    host: str
    port: int
    user: str
    identity: str
    known_hosts: str
    control_path: str

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        user: str,
        identity: str,
        known_hosts: str,
        control_path: str = "",
    ) -> None:
        for field, value in zip(
            _FIELDS, (name, host, port, user, identity, known_hosts, control_path), strict=True
        ):
            object.__setattr__(self, field, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"SshTarget is immutable: cannot set {name!r}")

    def _values(self) -> tuple[str | int, ...]:
        return tuple(getattr(self, f) for f in _FIELDS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SshTarget) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in _FIELDS)
        return f"SshTarget({fields})"

    def replace(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        known_hosts: str | None = None,
        control_path: str | None = None,
    ) -> SshTarget:
        """A copy with the address, the pinned keys' file or the multiplexing socket changed."""
        return SshTarget(
            self.name,
            self.host if host is None else host,
            self.port if port is None else port,
            self.user,
            self.identity,
            self.known_hosts if known_hosts is None else known_hosts,
            self.control_path if control_path is None else control_path,
        )
