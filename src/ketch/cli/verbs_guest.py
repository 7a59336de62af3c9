"""``ketch exec``, ``shell`` and ``transfer``: ketchd names the guest, the CLI runs ``ssh``.

The daemon gives an instance's :class:`~ketch.model.SshTarget` (starting the
instance first when it is stopped, as Multipass does); :mod:`ketch.cli.guest`
and :mod:`ketch.cli.transfer` then run the system ``ssh`` themselves, so the
bytes never pass through the daemon.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ketch.api import routes
from ketch.cli import client, primary_name, stream
from ketch.errors import InvalidArgument

if TYPE_CHECKING:
    from ketch.model import SshTarget


def _target(name: str, timeout: int | None = None) -> SshTarget:
    from ketch.errors import RemoteError
    from ketch.model import SshTarget

    daemon = client()
    try:
        doc = daemon.call(routes.SSH, name=name)
    except RemoteError as exc:
        if exc.code != "invalid-state":
            raise
        from ketch.api import models as m  # here: 'exec' on a running instance needs no body

        stream(routes.START, m.StartBody(timeout=timeout), name=name)  # as Multipass: start it
        doc = daemon.call(routes.SSH, name=name)
    return SshTarget(
        name=doc.name,
        host=doc.host,
        port=doc.port,
        user=doc.user,
        identity=doc.identity,
        known_hosts=doc.known_hosts,
    )


def cmd_exec(args: argparse.Namespace) -> int:
    from ketch.cli import guest

    workdir, command = exec_request(args)
    if not command:
        raise InvalidArgument("no command given", hint="ketch exec NAME -- COMMAND [ARGS...]")
    return guest.exec_command(_target(args.name), command, workdir=workdir)


def _exec_options(argv: list[str], workdir: str | None) -> tuple[str | None, list[str]]:
    """Options may also follow the name, as Multipass allows (up to the command)."""
    while argv and argv[0].startswith("-"):
        opt = argv.pop(0)
        key, eq, value = opt.partition("=")
        if key not in ("-d", "--working-directory", "--cd"):
            raise InvalidArgument(f"unknown exec option '{opt}'", hint="put the command after '--'")
        if not eq:
            if not argv:
                raise InvalidArgument(f"{key} needs a directory")
            value = argv.pop(0)
        workdir = value
    return workdir, argv


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


def exec_request(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The working directory and the guest command of a parsed ``exec``."""
    workdir, command = _exec_options(list(args.argv), args.working_directory)
    return workdir, command + list(getattr(args, "literal", []))
