"""``ketch exec``, ``shell`` and ``transfer``: ketchd names the guest, the CLI runs ``ssh``.

The daemon gives an instance's :class:`~ketch.sshtarget.SshTarget` (starting the
instance first when it is stopped, as Multipass does); :mod:`ketch.cli.guest`
and :mod:`ketch.cli.transfer` then run the system ``ssh`` themselves, so the
bytes never pass through the daemon.  The same reply lists the instance's
mounts, through which ``exec`` maps the host's working directory into the
guest (Multipass's semantics: ``-d DIR`` sets it, ``-n`` turns mapping off,
and the two clash).
"""

from __future__ import annotations

import argparse
import os
import sys

from ketch.api import routes
from ketch.cli import client, primary_name, stream
from ketch.errors import InvalidArgument
from ketch.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from ketch.api.plain import SshReply
    from ketch.sshtarget import SshTarget


def _reply(name: str, timeout: int | None = None) -> SshReply:
    """The instance's SSH target and mounts (decoded without msgspec: exec's start-up)."""
    from ketch.api.plain import ssh_target_reply
    from ketch.errors import RemoteError

    daemon = client()
    try:
        return daemon.call_plain(routes.SSH, ssh_target_reply, name=name)
    except RemoteError as exc:
        if exc.code != "invalid-state":
            raise
        from ketch.api import models as m  # here: 'exec' on a running instance needs no body

        stream(routes.START, m.StartBody(timeout=timeout), name=name)  # as Multipass: start it
        return daemon.call_plain(routes.SSH, ssh_target_reply, name=name)


def _target(name: str, timeout: int | None = None) -> SshTarget:
    return _target_of(_reply(name, timeout))


def _target_of(doc: SshReply) -> SshTarget:
    from ketch.host.ssh.master import usable_control

    # the socket checked again: ours, 0600
    target = doc.target.replace(control_path=usable_control(doc.target.control_path))
    if os.environ.get("KETCH_SERVER_ADDRESS"):  # a remote ketchd: its host's files, fetched
        from ketch.cli.verbs_remote import localise

        return localise(target)
    return target


# Multipass's exec.cpp: "Options --working-directory and --no-map-working-directory clash".
CLASH = "Options --working-directory and --no-map-working-directory clash"


def cmd_exec(args: argparse.Namespace) -> int:
    """Run a command; in the guest directory the host's is mounted as, unless -d or -n says."""
    from ketch.cli import guest

    workdir, no_map, command = exec_request(args)
    if not command:
        raise InvalidArgument("no command given", hint="ketch exec NAME -- COMMAND [ARGS...]")
    if workdir is not None and no_map:
        raise InvalidArgument(CLASH, hint="give one of -d DIR and -n")
    doc = _reply(args.name)
    remote = bool(os.environ.get("KETCH_SERVER_ADDRESS"))  # mounts are the daemon host's
    if workdir is None and not no_map and doc.mounts and not remote:
        workdir = guest.mapped_workdir(doc.mounts)
    return guest.exec_command(_target_of(doc), command, workdir=workdir)


_WORKDIR = ("-d", "--working-directory", "--cd")
_NO_MAP = ("-n", "--no-map-working-directory")


def _exec_options(
    argv: list[str], workdir: str | None, no_map: bool
) -> tuple[str | None, bool, list[str]]:
    """Options may also follow the name, as Multipass allows (up to the command)."""
    while argv and argv[0].startswith("-"):
        opt = argv.pop(0)
        key, eq, value = opt.partition("=")
        if key in _NO_MAP and not eq:
            no_map = True
            continue
        if key not in _WORKDIR:
            raise InvalidArgument(f"unknown exec option '{opt}'", hint="put the command after '--'")
        if not eq:
            if not argv:
                raise InvalidArgument(f"{key} needs a directory")
            value = argv.pop(0)
        workdir = value
    return workdir, no_map, argv


def cmd_shell(args: argparse.Namespace) -> int:
    from ketch.api import models as m
    from ketch.cli import guest
    from ketch.errors import RemoteError

    name = args.name or primary_name()
    if not args.name:
        try:
            client().call(routes.INFO, query={"names": name})
        except RemoteError as exc:
            if exc.code != "not-found":
                raise
            print(f"Launching {name}", file=sys.stderr)
            stream(routes.LAUNCH, m.LaunchBody(name=name, timeout=args.timeout))
    return guest.shell(_target(name, args.timeout))


def cmd_transfer(args: argparse.Namespace) -> int:
    from ketch.cli import transfer

    if len(args.paths) < 2:
        raise InvalidArgument("give at least one source and a destination")
    transfer.transfer(
        args.paths[:-1],
        args.paths[-1],
        resolve=_target,
        recursive=args.recursive,
        parents=args.parents,
    )
    return 0


def exec_request(args: argparse.Namespace) -> tuple[str | None, bool, list[str]]:
    """The working directory, whether mapping is off (-n), and the guest command of ``exec``."""
    workdir, no_map, command = _exec_options(
        list(args.argv), args.working_directory, bool(getattr(args, "no_map", False))
    )
    return workdir, no_map, command + list(getattr(args, "literal", []))
