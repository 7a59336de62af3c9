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

The package: :mod:`.keys` (key pairs, known_hosts), :mod:`.argv` (the ssh
argv, every option value quoted and escaped), :mod:`.stderr` (what ssh's exit
code and stderr mean) and :mod:`.ready` (running a command in the guest,
waiting until it is ready).

This package sits on the CLI hot path (``ketch exec``): importing it loads
nothing; each name above is loaded from its module on first use, and those
modules import only the standard library's light modules plus
``ketch.errors`` at import time; ``asyncio`` and :mod:`ketch.host.run` are
imported inside the async functions that need them.  :mod:`.master` is the
instance's multiplexed connection; :mod:`.session` the forward watcher's
long-lived session.
"""

from __future__ import annotations

from ketch.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from ketch.host.ssh.argv import (
        CONNECT_TIMEOUT,
        EXPANDED,
        HOST_KEY_ALGORITHM,
        SERVER_ALIVE_COUNT_MAX,
        SERVER_ALIVE_INTERVAL,
        SSH,
        remote_command,
        ssh_argv,
        ssh_option,
    )
    from ketch.host.ssh.keys import (
        SSH_KEYGEN,
        generate_keypair,
        known_hosts_line,
        write_known_hosts,
    )
    from ketch.host.ssh.ready import (
        BANNER_TRY,
        BOOT_FINISHED,
        read_banner,
        run_in_guest,
        wait_ready,
    )
    from ketch.host.ssh.stderr import (
        SSH_FAILED,
        StderrWatch,
        connection_failure,
        is_host_key_failure,
        ssh_failure_error,
    )

# Each name is imported from its module on first use (PEP 562): ``ketch exec`` needs the
# argv and stderr modules only, not the key generation's (tempfile, subprocess).
_FROM = {
    **dict.fromkeys(
        ("CONNECT_TIMEOUT", "EXPANDED", "HOST_KEY_ALGORITHM", "SERVER_ALIVE_COUNT_MAX",
         "SERVER_ALIVE_INTERVAL", "SSH", "remote_command", "ssh_argv", "ssh_option"),
        "argv",
    ),
    **dict.fromkeys(("SSH_KEYGEN", "generate_keypair", "known_hosts_line", "write_known_hosts"),
                    "keys"),
    **dict.fromkeys(("BANNER_TRY", "BOOT_FINISHED", "read_banner", "run_in_guest", "wait_ready"),
                    "ready"),
    **dict.fromkeys(("SSH_FAILED", "StderrWatch", "connection_failure", "is_host_key_failure",
                     "ssh_failure_error"), "stderr"),
}  # fmt: skip


def __getattr__(name: str) -> object:
    module = _FROM.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BANNER_TRY",
    "BOOT_FINISHED",
    "CONNECT_TIMEOUT",
    "EXPANDED",
    "HOST_KEY_ALGORITHM",
    "SERVER_ALIVE_COUNT_MAX",
    "SERVER_ALIVE_INTERVAL",
    "SSH",
    "SSH_FAILED",
    "SSH_KEYGEN",
    "StderrWatch",
    "connection_failure",
    "generate_keypair",
    "is_host_key_failure",
    "known_hosts_line",
    "read_banner",
    "remote_command",
    "run_in_guest",
    "ssh_argv",
    "ssh_failure_error",
    "ssh_option",
    "wait_ready",
    "write_known_hosts",
]
