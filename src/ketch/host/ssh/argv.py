"""The ``ssh`` argv (pure): every option pinned, every value quoted and escaped.

ssh reads each ``-o`` argument as a line of its configuration file: a value
with a space is split into words (so ``IdentityFile=/srv/my vms/key`` fails
with "extra arguments"), and the values of options that name files are
expanded (``%d`` is the home directory, ``${VAR}`` an environment variable, a
leading ``~`` the home directory).  :func:`ssh_option` writes a value so that
ssh reads back exactly it: double-quoted with ``\\`` and ``\"`` escaped when it
holds anything but plain characters, ``%`` written ``%%`` in the options that
expand tokens (:data:`EXPANDED`); what cannot be escaped (``${``, a leading
``~``, control characters) is refused.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence

from ketch.errors import InvalidArgument
from ketch.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from ketch.sshtarget import SshTarget

SSH = "ssh"

#: Seconds ``ssh`` may take to set up the TCP connection (ConnectTimeout).
CONNECT_TIMEOUT = 10
#: Keepalives: a guest that stops answering for 4 x 15 s ends the session.
SERVER_ALIVE_INTERVAL = 15
SERVER_ALIVE_COUNT_MAX = 4

#: The only host key algorithm ketch accepts: the pinned key is ed25519.
HOST_KEY_ALGORITHM = "ssh-ed25519"

#: The form of a host key alias (the instance name).
ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")

#: The options whose values ssh expands (%-tokens, ${VAR}, a leading ~), as
#: listed under TOKENS and ENVIRONMENT VARIABLES in ssh_config(5).
EXPANDED = frozenset(
    {
        "CertificateFile",
        "ControlPath",
        "IdentityAgent",
        "IdentityFile",
        "KnownHostsCommand",
        "LocalCommand",
        "RemoteCommand",
        "RevokedHostKeys",
        "UserKnownHostsFile",
    }
)
_PLAIN = re.compile(r"[A-Za-z0-9_./:,@+%-]+\Z")


def ssh_option(key: str, value: str) -> str:
    """The ``-o`` argument that sets ``key`` to exactly ``value``.

    Raises :class:`InvalidArgument` for a value ssh cannot be told literally.
    """
    if not value:
        raise InvalidArgument(f"the ssh option {key} has an empty value")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidArgument(
            f"the ssh option {key} has a control character: {value!r}",
            hint="use a storage root whose path has no control characters",
        )
    if key in EXPANDED:
        if "${" in value or value.startswith("~"):
            raise InvalidArgument(
                f"ssh would expand {value!r} (the value of {key}) into another path",
                hint="use a storage root whose path has no '${' and does not start with '~'",
            )
        value = value.replace("%", "%%")
    if not _PLAIN.match(value):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{key}={value}"


def ssh_argv(
    target: SshTarget,
    remote: str | None,
    *,
    tty: bool | None,
    batch: bool = True,
    master: bool = False,
) -> list[str]:
    """The ``ssh`` argv reaching ``target``, running ``remote`` (a shell string).

    ``remote=None`` asks for a login shell.  ``tty``: True forces a
    pseudo-terminal (``-t``), False refuses one (``-T``), None lets ssh decide
    (a tty for a login shell on a terminal).  ``batch`` sets ``BatchMode``
    (never prompt); ketch authenticates with its key only, so no prompt is
    expected either way.

    With ``target.control_path`` set the session goes through the instance's
    multiplexed connection there (``ControlMaster=no``: ssh never becomes a
    master by itself, and connects directly when the socket does not answer).
    ``master=True`` is the argv of that master itself (:mod:`.master`): no
    command (``-N``), no tty, listening on ``target.control_path``.
    """
    if master and (remote is not None or not target.control_path):
        raise InvalidArgument("a control master runs no command and needs a control path")
    if not ALIAS.match(target.name):
        raise InvalidArgument(f"not an instance name: {target.name!r}")
    if target.host.startswith("-") or not target.host:
        raise InvalidArgument(f"not a host address: {target.host!r}")
    if not 0 < target.port < 65536:
        raise InvalidArgument(f"not a port number: {target.port}")
    opts = {
        # Pinning: only the instance's own known_hosts, only its ed25519 key.
        "HostKeyAlias": target.name,
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": os.path.abspath(target.known_hosts),
        "GlobalKnownHostsFile": "/dev/null",
        "HostKeyAlgorithms": HOST_KEY_ALGORITHM,
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        # Authentication: ketch's key only, never the agent, never a password.
        "IdentityFile": os.path.abspath(target.identity),
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
        "ControlMaster": "yes" if master else "no",
        "ControlPath": target.control_path or "none",
    }
    if master:
        opts["ControlPersist"] = "no"  # ketchd owns the process: it lives until ended
        tty = False
    argv = [SSH, "-F", "/dev/null"]  # ignore ~/.ssh/config and /etc/ssh/ssh_config
    for key, value in opts.items():
        argv += ["-o", ssh_option(key, value)]
    if tty is True:
        argv.append("-t")
    elif tty is False:
        argv.append("-T")
    if master:
        argv.append("-N")
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
