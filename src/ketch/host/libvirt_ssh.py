"""The SSH files of one ``qemu+ssh://`` host: an ssh_config, a known_hosts, and the wrapper.

libvirt's ssh transport runs ``ssh -p PORT -l USER -T -e none -o BatchMode=yes [-o
StrictHostKeyChecking=no] -- HOST virt-ssh-helper URI`` and takes no other ssh option;
its ``command=`` parameter names the program to run instead of ``ssh``.  So ketch gives
each such host a directory (``hosts/<name>/`` in the storage root) holding:

- ``known_hosts``: the host keys the user gave with ``--known-hosts`` (ketch's own copy;
  without one, ssh's usual files are read);
- ``ssh_config``: ketch's options first (the key, ``IdentitiesOnly``, that known_hosts
  with ``StrictHostKeyChecking yes``, bounded connect and keepalive), then the daemon
  user's own ``~/.ssh/config`` and the system's, included: what ketch does not set
  (a ``ProxyJump``, say) still applies;
- ``ssh``: ``exec ssh -F <that ssh_config> "$@"``, passed to libvirt as ``command=``.

They are derived from the stored host (:class:`ketch.model.HostSpec`) and rewritten when
they differ.  The text is made by pure functions; :func:`write` puts it in place.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from ketch.layout import DIR_MODE, FILE_MODE

SSH_CONFIG = "ssh_config"
KNOWN_HOSTS = "known_hosts"
WRAPPER = "ssh"
CONNECT_TIMEOUT = 10  # seconds ssh waits for the TCP connection and the SSH handshake
ALIVE_INTERVAL = 5  # seconds between keepalives once connected; 3 unanswered: ssh gives up
ALIVE_COUNT = 3


def _quoted(path: Path) -> str:
    """A path as ssh_config reads one (double quotes; ketch's own paths have none)."""
    return f'"{path}"'


def config_text(directory: Path, ssh_key: str | None, known_hosts: bool) -> str:
    """The host's ssh_config (pure)."""
    lines = [
        "# Written by ketch for one libvirt host; rewritten from its record.",
        "BatchMode yes",
        f"ConnectTimeout {CONNECT_TIMEOUT}",
        f"ServerAliveInterval {ALIVE_INTERVAL}",
        f"ServerAliveCountMax {ALIVE_COUNT}",
    ]
    if ssh_key is not None:
        lines += [f"IdentityFile {_quoted(Path(ssh_key))}", "IdentitiesOnly yes"]
    if known_hosts:
        lines += [
            f"UserKnownHostsFile {_quoted(directory / KNOWN_HOSTS)}",
            "GlobalKnownHostsFile /dev/null",
            "StrictHostKeyChecking yes",
        ]
    lines += ["Include ~/.ssh/config", "Include /etc/ssh/ssh_config"]
    return "\n".join(lines) + "\n"


def wrapper_text(directory: Path, ssh: str = "ssh") -> str:
    """The ``ssh`` libvirt runs: the real one, with the host's ssh_config (pure)."""
    config = shlex.quote(str(directory / SSH_CONFIG))
    return f'#!/bin/sh\nexec {shlex.quote(ssh)} -F {config} "$@"\n'


def _put(path: Path, text: str, mode: int) -> None:
    try:
        if path.read_text() == text and (path.stat().st_mode & 0o777) == mode:
            return
    except OSError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write(directory: Path, ssh_key: str | None, known_hosts: str | None) -> Path:
    """Put the host's files in ``directory`` (made 0700); the wrapper's path."""
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if known_hosts is not None:
        _put(directory / KNOWN_HOSTS, known_hosts, FILE_MODE)
    else:
        (directory / KNOWN_HOSTS).unlink(missing_ok=True)
    config = config_text(directory, ssh_key, known_hosts is not None)
    _put(directory / SSH_CONFIG, config, FILE_MODE)
    _put(directory / WRAPPER, wrapper_text(directory), 0o700)
    return directory / WRAPPER
