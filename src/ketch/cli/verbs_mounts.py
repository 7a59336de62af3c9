"""``ketch mount`` and ``ketch umount`` (and ``launch --mount``'s argument): Multipass's verbs.

``ketch mount SOURCE INSTANCE[:TARGET]… [-t classic|native] [-u HOST:GUEST]… [-g HOST:GUEST]…``:
TARGET defaults to SOURCE's absolute path, as Multipass; several instances in
one command, each its own operation (the first failure's exit code).
``ketch umount INSTANCE[:TARGET]…``: no target is every mount of the instance.
The parsing is pure (:func:`parse_targets`, :func:`launch_mount`).
"""

from __future__ import annotations

import argparse
import os

from ketch.api import routes
from ketch.cli import report, stream
from ketch.errors import InvalidArgument, KetchError


def split_target(text: str) -> tuple[str, str | None]:
    """``INSTANCE[:PATH]`` as (instance, path or None)."""
    name, sep, path = text.partition(":")
    if not name:
        raise InvalidArgument(
            f"invalid mount target '{text}'", hint="give it as INSTANCE or INSTANCE:PATH"
        )
    if sep and not path:
        raise InvalidArgument(f"invalid mount target '{text}': the path after ':' is empty")
    return name, (path if sep else None)


def parse_targets(source: str, targets: list[str]) -> list[tuple[str, str]]:
    """(instance, guest path) for each ``INSTANCE[:PATH]``; the default path is SOURCE's."""
    default = os.path.abspath(os.path.expanduser(source))
    return [
        (name, path if path is not None else default)
        for name, path in (split_target(t) for t in targets)
    ]


def launch_mount(text: str) -> tuple[str, str]:
    """``launch --mount SOURCE:TARGET`` (TARGET optional: SOURCE's absolute path)."""
    source, sep, target = text.partition(":")
    if not source:
        raise InvalidArgument(
            f"invalid --mount '{text}'", hint="give it as SOURCE:TARGET, e.g. ~/src:/src"
        )
    absolute = os.path.abspath(os.path.expanduser(source))
    return absolute, (target if sep and target else absolute)


def cmd_mount(args: argparse.Namespace) -> int:
    from ketch.api import models as m
    from ketch.cli.verbs_remote import refuse_remote

    refuse_remote("mount")

    source = os.path.abspath(os.path.expanduser(args.source))
    failed = 0
    for name, target in parse_targets(args.source, args.targets):
        body = m.MountBody(
            mounts=[
                m.MountRequest(
                    source=source,
                    target=target,
                    type=args.type,
                    uid_maps=list(args.uid_map or []),
                    gid_maps=list(args.gid_map or []),
                )
            ]
        )
        try:
            stream(routes.MOUNT, body, name=name)
        except KetchError as exc:
            failed = failed or exc.exit_code
            report("mount", exc)
    return failed


def cmd_umount(args: argparse.Namespace) -> int:
    from ketch.api import models as m

    wanted: dict[str, list[str]] = {}
    for text in args.mounts:
        name, path = split_target(text)
        paths = wanted.setdefault(name, [])
        if path is None:
            paths.clear()
            wanted[name] = paths  # every mount of the instance
        else:
            paths.append(path)
    failed = 0
    for name, paths in wanted.items():
        try:
            stream(routes.UMOUNT, m.UmountBody(targets=paths), name=name)
        except KetchError as exc:
            failed = failed or exc.exit_code
            report("umount", exc)
    return failed
