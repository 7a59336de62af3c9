"""``ketch``: the command line.  Verbs, flags, messages and exit codes follow Multipass.

Kept light on purpose: argparse only on the paths of ``list``, ``info`` and
``exec``; a verb imports its own handler's module only (the parser names the
handlers, see :mod:`ketch.cli.parser`); the API's models (msgspec) and the
output formats are imported in the verbs that use them, after the request is
sent (see :mod:`ketch.client`); rich and yaml are imported when used.  This
module holds ``main()`` and the one place a :class:`~ketch.errors.KetchError`
becomes an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ketch.cli import report
from ketch.cli.parser import HELP, VERBS, Parser, build_parser
from ketch.errors import EXIT_USAGE, KetchError

__all__ = ["HELP", "build_parser", "main", "parse_args"]


def parse_args(parser: Parser, args_list: list[str]) -> argparse.Namespace:
    """Parse a command line; for ``exec``, everything after the first "--" is literal.

    (argparse would drop that "--" and read a command such as ``-d x`` as options.)
    """
    literal: list[str] = []
    if args_list[:1] == ["exec"] and "--" in args_list:
        cut = args_list.index("--")
        args_list, literal = args_list[:cut], args_list[cut + 1 :]
    args = parser.parse_args(args_list)
    if args_list[:1] == ["exec"]:
        args.literal = literal
    return args


def alias_command(args_list: list[str]) -> list[str] | None:
    """``ketch ALIAS [--] ARGS...`` as the ``exec`` it stands for; None if ALIAS is none.

    As Multipass's argparser.cpp (``prepare_alias_execution``): a first word
    that is no verb is looked up among the aliases (the active context's,
    else the only one of that name, else ``CONTEXT.ALIAS``).  Only then is
    the alias file read: the verbs' own paths never load it.
    """
    from ketch.cli import alias_store

    word = args_list[0]
    aliases = alias_store.load()
    definition = aliases.resolve(word)
    if definition is None:
        where = aliases.get_context_and_alias(word)
        if where is None:
            return None
        definition = aliases.contexts[where[0]][where[1]]
    rest = args_list[1:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    no_map = ["-n"] if definition.working_directory == "default" else []
    return ["exec", *no_map, definition.instance, "--", definition.command, *rest]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list in (["-h"], ["--help"]):  # as 'ketch help', laid out as 'multipass help'
        from ketch.cli.helptext import general_help

        sys.stdout.write(general_help(HELP))
        return 0
    verb = args_list[0] if args_list else None
    if verb and verb not in VERBS and verb not in HELP and not verb.startswith("-"):
        try:
            expanded = alias_command(args_list)
        except KetchError as exc:
            report(verb, exc)
            return exc.exit_code
        if expanded is not None:
            args_list, verb = expanded, "exec"
    parser = build_parser(verb if verb in VERBS else None)
    args = parse_args(parser, args_list)
    if not getattr(args, "func", None):  # no verb: the general help, as Multipass
        from ketch.cli.helptext import general_help

        sys.stderr.write(general_help(HELP))
        return EXIT_USAGE
    try:
        code: int = args.func(args)
    except KetchError as exc:
        report(args.command, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
