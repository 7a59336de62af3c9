"""``ketch get``, ``set``, ``doctor``, ``networks``, ``version``, ``daemon``, ``help``..."""

from __future__ import annotations

import argparse
import sys

from ketch import __version__
from ketch.api import routes
from ketch.cli import client, stream
from ketch.cli.parser import build_parser
from ketch.errors import InvalidArgument, NotFound


def cmd_get(args: argparse.Namespace) -> int:
    # Multipass's behaviour and sentences: src/client/cli/cmd/get.cpp
    if args.keys:
        keys = client().call(routes.SETTING_KEYS).keys
        if args.key is None:
            sys.stdout.write("".join(f"{k}\n" for k in keys))
        elif args.key in keys:
            print(args.key)
        else:
            raise NotFound(
                f"Unrecognized settings key: '{args.key}'",
                hint="'ketch get --keys' lists every key",
            )
        return 0
    if args.key is None:
        raise InvalidArgument(
            "Multiple settings not implemented yet. Please try again with either a single key "
            "or just the `--keys` flag for now."
        )
    value = client().call(routes.GET_SETTING, key=args.key).value
    print(value if value or args.raw else "<empty>")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    # Multipass's behaviour and sentences: src/client/cli/cmd/set.cpp
    key, sep, value = args.assignment.partition("=")
    if not key:
        raise InvalidArgument("Bad key-value format.", hint="use KEY=VALUE, or KEY to be asked")
    if not sep and key == "local.passphrase":
        from ketch.cli.verbs_remote import ask_new_passphrase

        value = ask_new_passphrase()
    elif not sep:
        value = _prompt(key)
    client().call(routes.SET_SETTING, m.SettingBody(value=value), key=key)
    return 0


def _prompt(key: str) -> str:
    """The value of ``key``, asked on the terminal (Multipass's plain prompter: ``KEY: ``)."""
    if not sys.stdin.isatty():
        raise InvalidArgument(
            f"no value given for '{key}', and there is no terminal to ask for it",
            hint=f"give it as {key}=VALUE",
        )
    try:
        return input(f"{key}: ")
    except EOFError as exc:
        hint = f"give it as {key}=VALUE"
        raise InvalidArgument(f"no value given for '{key}'", hint=hint) from exc


def cmd_doctor(args: argparse.Namespace) -> int:
    from ketch.api import models as m
    from ketch.cli import output

    result = stream(routes.DOCTOR, m.DoctorBody(names=list(args.names), fix=args.fix))
    findings = result.findings
    if args.format == "json":
        sys.stdout.write(output.to_json(output.plain(result)))
    else:
        sys.stdout.write(output.doctor_output(findings, fixed=args.fix))
    unresolved = [f for f in findings if not f.fixed]
    return 2 if unresolved else 0


def cmd_networks(args: argparse.Namespace) -> int:
    from ketch.cli import output

    sys.stdout.write(output.networks_output(client().call(routes.NETWORKS), args.format))
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    """The client's version, and ketchd's when one answers: never starts a daemon.

    As Multipass (src/client/cli/cmd/version.cpp, formatter/*_formatter.cpp): with no
    daemon, only the client line (or key) is printed, and it still exits 0.
    """
    from ketch.cli import output
    from ketch.client import Client
    from ketch.errors import DaemonUnreachable
    from ketch.layout import storage_dir

    daemon = ""
    try:
        daemon = Client(storage_dir(), autostart=False).call(routes.VERSION).ketchd
    except DaemonUnreachable as exc:
        print(f"ketchd is not available: {exc.message}", file=sys.stderr)
    doc = {"ketch": __version__, **({"ketchd": daemon} if daemon else {})}
    if args.format == "json":
        sys.stdout.write(output.to_json(doc))
    elif args.format == "yaml":
        sys.stdout.write(output.to_yaml(doc))
    elif args.format == "csv":
        sys.stdout.write(output.to_csv([k.capitalize() for k in doc], [list(doc.values())]))
    else:
        sys.stdout.write("".join(f"{k:<12}{v}\n" for k, v in doc.items()))
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    if getattr(args, "install_unit", False):
        from ketch.daemon.unit import install
        from ketch.layout import storage_dir

        print(f"installed and enabled {install(storage_dir(), system=args.system)}")
        return 0
    from ketch.daemon.main import main as daemon_main

    return daemon_main([])


def cmd_completion(args: argparse.Namespace) -> int:
    from ketch.cli.completion import script

    sys.stdout.write(script(args.shell, build_parser()))
    return 0


def cmd_help(args: argparse.Namespace) -> int:
    from ketch.cli.helptext import general_help
    from ketch.cli.parser import HELP

    if not args.topic:
        sys.stdout.write(general_help(HELP))
        return 0
    parser = build_parser()
    parser.parse_args([args.topic, "--help"])
    return 0
