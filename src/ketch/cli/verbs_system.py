"""``ketch get``, ``set``, ``doctor``, ``version``, ``daemon``, ``help`` and ``completion``."""

from __future__ import annotations

import argparse
import sys

from ketch import __version__
from ketch.api import routes
from ketch.cli import client, stream
from ketch.cli.parser import build_parser
from ketch.errors import InvalidArgument


def cmd_get(args: argparse.Namespace) -> int:
    print(client().call(routes.GET_SETTING, key=args.key).value)
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    key, sep, value = args.assignment.partition("=")
    if not sep or not key:
        raise InvalidArgument(f"invalid setting '{args.assignment}'", hint="use KEY=VALUE")
    client().call(routes.SET_SETTING, m.SettingBody(value=value), key=key)
    return 0


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


def cmd_version(args: argparse.Namespace) -> int:
    from ketch.cli import output
    from ketch.errors import DaemonUnreachable

    try:
        daemon = client().call(routes.VERSION).ketchd
    except DaemonUnreachable:
        daemon = ""
    if args.format == "json":
        sys.stdout.write(output.to_json({"ketch": __version__, "ketchd": daemon}))
    else:
        print(f"ketch   {__version__}")
        print(f"ketchd  {daemon or '--'}")
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
    parser = build_parser()
    if not args.topic:
        parser.print_help()
        return 0
    parser.parse_args([args.topic, "--help"])
    return 0
