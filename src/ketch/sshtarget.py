"""How a client reaches an instance over SSH: :class:`SshTarget` (plain data, no I/O).

Apart from :mod:`ketch.model` (the rest of the shared data), so ``ketch exec``,
``shell`` and ``transfer`` do not pay at every start for the model's other
classes, which they do not use (``docs/benchmarks.md``, the ``exec`` rows).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SshTarget:
    """Everything a client needs to reach an instance over SSH, host key pinned."""

    name: str  # instance name; also the HostKeyAlias in known_hosts
    host: str  # 127.0.0.1 (user-mode networking forwards a port)
    port: int
    user: str
    identity: str  # path of the client private key
    known_hosts: str  # path of the instance's pinned known_hosts file
    # The instance's multiplexing socket (host/ssh/master.py) when its master is up, else "".
    control_path: str = ""
