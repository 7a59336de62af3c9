"""``ketch alias``, ``aliases``, ``unalias`` and ``prefer``: Multipass's aliases, client-side.

The dictionary, its file and the scripts are :mod:`ketch.cli.alias_store`;
this module holds the verbs, their checks and messages (each quoted from
Multipass's ``alias.cpp``, ``unalias.cpp``, ``prefer.cpp`` and
``common_cli.cpp``) and the four output formats of ``aliases`` (its
``table_formatter.cpp``, ``csv_formatter.cpp``, ``json_formatter.cpp`` and
``yaml_formatter.cpp``, byte for byte).  ``alias`` asks the daemon whether
the instance exists (``list``, which every state answers); nothing else
here talks to the daemon.  :func:`forget_instances` is what ``delete
--purge`` and ``purge`` call for the instances they purged.
"""

from __future__ import annotations

import argparse
import posixpath
import sys
from collections.abc import Iterable

from ketch.cli import alias_scripts as scripts
from ketch.cli import alias_store as store
from ketch.cli.parser import HELP, VERBS
from ketch.errors import InvalidArgument, KetchError


def cmd_alias(args: argparse.Namespace) -> int:
    from ketch.api import routes
    from ketch.cli import client

    instance, colon, command = args.definition.partition(":")
    if not colon or not command:
        raise InvalidArgument("No command given", hint="give it as INSTANCE:COMMAND, e.g. vm:ls")
    if not instance:
        raise InvalidArgument("No instance name given", hint="give it as INSTANCE:COMMAND")
    # alias.cpp: NAME defaults to the command's file name (QFileInfo::fileName).
    name = store.check_name(args.name if args.name is not None else posixpath.basename(command))
    names = {i.name for i in client().call(routes.LIST).list}
    if instance not in names:
        raise InvalidArgument(
            f"Instance '{instance}' does not exist", hint="'ketch list' shows the instances"
        )
    definition = store.AliasDefinition(instance, command, "default" if args.no_map else "map")
    with store.changing() as aliases:
        if name in aliases.active_context():
            raise InvalidArgument(
                f"Alias '{name}' already exists in current context",
                hint=f"remove it first ('ketch unalias {name}') or choose another NAME",
            )
        if name in HELP or name in VERBS:
            raise InvalidArgument(
                f"Alias name '{name}' clashes with a command name",
                hint="give the alias another NAME: ketch alias INSTANCE:COMMAND NAME",
            )
        _refuse_foreign(f"{aliases.active}.{name}", name)
        empty_before = aliases.empty()
        aliases.add_alias(name, definition)
    hint = scripts.path_hint() if empty_before else None
    if hint:
        sys.stdout.write(hint)  # create_alias.cpp: on the first alias, if not on PATH
    return 0


def _refuse_foreign(*names: str) -> None:
    where = store.bin_dir()
    for n in names:
        path = where / n
        if (path.exists() or path.is_symlink()) and not scripts.is_ours(path):
            raise InvalidArgument(
                f"Error when creating script for alias: {path} exists and was not made by ketch",
                hint=f"move {path} away, or give the alias another NAME",
            )


def cmd_aliases(args: argparse.Namespace) -> int:
    aliases = store.load()
    sys.stdout.write(aliases_output(aliases, args.format))
    if args.format == "table" and not aliases.empty():
        where = store.bin_dir()
        note = f"The aliases' scripts are in {where}"
        hint = scripts.path_hint()
        print(note + (" (not on your PATH)." if hint else "."), file=sys.stderr)
        if hint:
            sys.stderr.write(hint)
    return 0


def cmd_unalias(args: argparse.Namespace) -> int:
    # common_cli.cpp: check_for_name_and_all_option_conflict
    if not args.names and not args.all:
        raise InvalidArgument("Name argument or --all is required")
    if args.names and args.all:
        raise InvalidArgument(f"Cannot specify name{'s' if len(args.names) > 1 else ''} "
                              "when --all option set")  # fmt: skip
    with store.changing() as aliases:
        if args.all:
            doomed = [(aliases.active, a) for a in sorted(aliases.active_context())]
        else:
            found = {n: aliases.get_context_and_alias(n) for n in args.names}
            bad = [n for n, where in found.items() if where is None]
            if bad:  # unalias.cpp
                raise InvalidArgument(
                    f"Nonexistent {'alias' if len(bad) == 1 else 'aliases'}: {', '.join(bad)}.",
                    hint="'ketch aliases' lists them (CONTEXT.ALIAS names one of another context)",
                )
            doomed = [w for w in found.values() if w is not None]
        for context, name in doomed:
            aliases.remove_alias(context, name)
    return 0


def cmd_prefer(args: argparse.Namespace) -> int:
    context = store.check_name(args.context, "Context")
    with store.changing() as aliases:
        aliases.set_active_context(context)
    return 0


def forget_instances(instances: Iterable[str]) -> None:
    """Remove the aliases of purged instances (and contexts named as they are), as Multipass.

    Nothing is created when there are no aliases; a failure is a warning: the
    purge itself has happened.
    """
    instances = list(instances)
    if not instances or not (store.alias_home() / store.ALIASES_FILE).exists():
        return
    try:
        with store.changing() as aliases:
            for name in instances:
                aliases.remove_aliases_for_instance(name)
    except KetchError as exc:
        print(f"Warning: the aliases of {', '.join(instances)} stay: {exc.message}",
              file=sys.stderr)  # fmt: skip


# -- output -------------------------------------------------------------------------


def aliases_output(aliases: store.AliasDict, fmt: str) -> str:
    if fmt == "json":
        return store.qt_json(aliases.to_json()) + "\n"
    if fmt == "csv":
        return _csv(aliases)
    if fmt == "yaml":
        return _yaml(aliases)
    return _table(aliases)


def _rows(aliases: store.AliasDict) -> list[tuple[str, str, store.AliasDefinition]]:
    """(shown context, alias, definition), sorted: the active context is marked ``*``."""
    return [
        (c + ("*" if c == aliases.active else ""), name, d)
        for c, defs in sorted(aliases.contexts.items())
        for name, d in sorted(defs.items())
    ]


def _csv(aliases: store.AliasDict) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Alias", "Instance", "Command", "Working directory", "Context"])
    for context, name, d in _rows(aliases):
        w.writerow([name, d.instance, d.command, d.working_directory, context])
    return buf.getvalue()


COL_BUFFER = 3  # Multipass's format_utils.h: col_buffer


def _table(aliases: store.AliasDict) -> str:
    """table_formatter.cpp: columns as wide as their widest cell plus 3; last one unpadded."""
    if aliases.empty():
        return "No aliases defined.\n"
    everything = [d for defs in aliases.contexts.values() for d in defs.items()]
    header = ("Alias", "Instance", "Command", "Context", "Working directory")

    def width(cells: Iterable[int], head: str) -> int:
        return max([*cells, len(head)]) + COL_BUFFER

    widths = (
        width((len(a) for a, _ in everything), header[0]),
        width((len(d.instance) for _, d in everything), header[1]),
        width((len(d.command) for _, d in everything), header[2]),
        width(
            (len(c) + (c == aliases.active and bool(defs)) for c, defs in aliases.contexts.items()),
            header[3],
        ),
    )
    lines = [_line(header, widths)]
    for context, name, d in _rows(aliases):
        lines.append(_line((name, d.instance, d.command, context, d.working_directory), widths))
    return "".join(lines)


def _line(cells: tuple[str, ...], widths: tuple[int, ...]) -> str:
    return "".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + cells[-1] + "\n"


def _yaml(aliases: store.AliasDict) -> str:
    """yaml_formatter.cpp: ``active_context``, then each context's aliases (``~`` if none)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
            super().increase_indent(flow, False)  # yaml-cpp indents a list under its key

    Dumper.add_representer(
        type(None), lambda d, _: d.represent_scalar("tag:yaml.org,2002:null", "~")
    )
    doc = {
        "active_context": aliases.active,
        "aliases": {
            c: [{"alias": a, **d.to_json()} for a, d in sorted(defs.items())] or None
            for c, defs in sorted(aliases.contexts.items())
        },
    }
    return str(yaml.dump(doc, Dumper=Dumper, sort_keys=False, default_flow_style=False))
