"""Command-line interface: argument parsing, output formats, exit codes.

The package is laid out so that a verb loads only its own code:

* :mod:`ketch.cli.main`: ``main()``, the console script, and the one error
  handler that turns a :class:`~ketch.errors.KetchError` into an exit code;
* :mod:`ketch.cli.parser`: the argparse tree (``build_parser``, ``HELP`` by
  area, ``ALIASES``, ``VERBS``), which names each verb's handler by module and
  imports it only when the verb runs; each area's arguments are declared in
  ``ketch.cli.args_<area>`` (instances, guest, system), and a verb's run
  imports only its own area's;
* the handlers, one module per theme: :mod:`~ketch.cli.verbs_instances`
  (launch, list, info, the lifecycle, delete, recover, purge),
  :mod:`~ketch.cli.verbs_snapshots` (snapshot, restore, clone),
  :mod:`~ketch.cli.verbs_guest` (exec, shell, transfer),
  :mod:`~ketch.cli.verbs_images` (find, image),
  :mod:`~ketch.cli.verbs_system` (get, set, doctor, version, daemon, help,
  completion), :mod:`~ketch.cli.verbs_aliases` (alias, aliases, unalias,
  prefer; the aliases' file and scripts are :mod:`~ketch.cli.alias_store`
  and :mod:`~ketch.cli.alias_scripts`), :mod:`~ketch.cli.verbs_wait`
  (wait-ready); ``ketch help`` is laid out by :mod:`~ketch.cli.helptext`;
* guest access, run by the CLI itself: :mod:`~ketch.cli.guest` (exec,
  shell, running ssh), :mod:`~ketch.cli.transfer` (files and trees), its
  guest-side scripts :mod:`~ketch.cli.transfer_scripts` and its ``NAME:PATH``
  arguments :mod:`~ketch.cli.locations`;
* :mod:`~ketch.cli.output`, :mod:`~ketch.cli.progress` and
  :mod:`~ketch.cli.completion`, imported by the verbs that use them.

This module holds what the handlers share (the client, streamed operations,
instance names, failure reports, questions): every ``ketch`` command imports
the package anyway, so keeping them here costs no module of its own on the
hot path (``ketch list``, ``info``, ``exec``).
"""

from __future__ import annotations

import sys

from ketch.api import routes
from ketch.errors import InvalidArgument, KetchError
from ketch.hints import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse
    from typing import Any, TypeVar

    from ketch.api import models as m
    from ketch.client import Client

    B = TypeVar("B", bound=m.Body)
    R = TypeVar("R", bound=m.Reply)


def client() -> Client:
    """A client of this storage root's ketchd."""
    from ketch.client import Client
    from ketch.layout import storage_dir

    return Client(storage_dir())


def stream(route: routes.Route[B, R], body: B | None = None, **params: str) -> R:
    """Run an operation, showing its events; its result.  Ctrl-C asks ketchd to cancel it."""
    from ketch.cli.progress import interrupted, renderer

    daemon = client()
    try:
        with renderer() as show:
            return daemon.run(route, body, show, **params)
    except KeyboardInterrupt:
        interrupted(daemon)  # says whether the daemon cancelled it or it goes on
        raise


def instance_names(args: argparse.Namespace, *, deleted_ok: bool = False) -> list[str]:
    """Instance names from the arguments; --all means every instance; none: the primary."""
    if getattr(args, "all", False):
        if args.names:
            raise InvalidArgument("give instance names or --all, not both")
        doc = client().call(routes.LIST)
        return [i.name for i in doc.list if deleted_ok or i.state != "Deleted"]
    if args.names:
        return list(args.names)
    return [primary_name()]


def primary_name() -> str:
    """The primary instance's name (``client.primary-name``); InvalidArgument when disabled."""
    name = client().call(routes.GET_SETTING, key="client.primary-name").value
    if not name:
        raise InvalidArgument("no instance name given and the primary instance is disabled")
    return name


def each(
    route: routes.Route[B, Any],
    args: argparse.Namespace,
    body: B | None = None,
    *,
    deleted_ok: bool = False,
    done: list[str] | None = None,
) -> int:
    """Run ``route`` on every named instance, reporting each failure; the first exit code.

    The names it succeeded on are appended to ``done`` when given.
    """
    verb = route.name
    failed = 0
    for name in instance_names(args, deleted_ok=deleted_ok):
        try:
            stream(route, body, name=name)
        except KetchError as exc:
            failed = failed or exc.exit_code
            report(verb, exc)
        else:
            if done is not None:
                done.append(name)
    return failed


def report(verb: str, exc: KetchError) -> None:
    """``VERB failed: MESSAGE`` and its hint, on stderr."""
    print(f"{verb} failed: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)


def snapshot_ref(text: str) -> tuple[str, str]:
    """``INSTANCE.SNAPSHOT`` split in two, or InvalidArgument."""
    instance, dot, snapshot = text.partition(".")
    if not dot or not instance or not snapshot:
        raise InvalidArgument(
            f"invalid snapshot '{text}'", hint="give it as INSTANCE.SNAPSHOT, e.g. web.snapshot1"
        )
    return instance, snapshot


def ask(question: str) -> bool | None:
    """Yes/no on a terminal (empty means yes); None when there is no terminal to ask."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return None
    while True:
        try:
            answer = input(question).strip().lower()
        except EOFError:
            return None
        if answer in ("", "y", "yes"):
            return True
        if answer in ("n", "no"):
            return False
        print("Please answer yes or no.")
