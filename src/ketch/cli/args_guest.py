"""The arguments of the verbs that reach into guests: mount, exec, transfer, alias, forward."""

from __future__ import annotations

import argparse

from ketch.cli.parser import Verbs, no_map


def declare(v: Verbs) -> None:
    """Declare the guest verbs' arguments."""
    cmd, fmt, timeout = v.cmd, v.fmt, v.timeout
    sp = cmd("mount", "verbs_mounts")
    sp.add_argument("source", metavar="SOURCE", help="the local directory to mount")
    sp.add_argument(
        "targets", nargs="+", metavar="INSTANCE[:TARGET]", help="where (default: SOURCE's path)"
    )
    sp.add_argument("-t", "--type", choices=("classic", "native"), default="classic")
    sp.add_argument(
        "-u", "--uid-map", action="append", metavar="HOST:GUEST", help="a user id mapping"
    )
    sp.add_argument(
        "-g", "--gid-map", action="append", metavar="HOST:GUEST", help="a group id mapping"
    )
    sp = cmd("umount", "verbs_mounts")
    sp.add_argument("mounts", nargs="+", metavar="INSTANCE[:TARGET]", help="no TARGET: all")

    sp = cmd("exec", "verbs_guest")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument(
        "-d", "--working-directory", "--cd", dest="working_directory", help="directory to run in"
    )
    no_map(sp)
    sp.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    sp = cmd("shell", "verbs_guest")
    sp.add_argument("name", nargs="?", metavar="NAME", help="instance (default: the primary)")
    timeout(sp)
    sp = cmd("transfer", "verbs_guest")
    sp.add_argument(
        "paths", nargs="+", metavar="SRC... DST", help="NAME:PATH on the guest side, - for stdio"
    )
    sp.add_argument("-r", "--recursive", action="store_true", help="copy directories")
    sp.add_argument("-p", "--parents", action="store_true", help="make missing parent directories")

    sp = cmd("alias", "verbs_aliases")
    sp.add_argument("definition", metavar="INSTANCE:COMMAND", help="the command to run there")
    sp.add_argument("name", nargs="?", metavar="NAME", help="alias name (default: COMMAND's)")
    no_map(sp)
    sp = cmd("aliases", "verbs_aliases")
    fmt(sp)
    sp = cmd("unalias", "verbs_aliases")
    sp.add_argument("names", nargs="*", metavar="NAME", help="aliases (or CONTEXT.ALIAS)")
    sp.add_argument("--all", action="store_true", help="every alias of the current context")
    sp = cmd("prefer", "verbs_aliases")
    sp.add_argument("context", metavar="CONTEXT", help="the alias context to switch to")
    sp = cmd("forward", "verbs_forwards")
    sp.add_argument("name", metavar="NAME", help="the instance")
    sp.add_argument(
        "rules", nargs="+", metavar="[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]", help="the forwards"
    )
    sp.add_argument("--remove", action="store_true", help="remove these explicit forwards")
    sp = cmd("forwards", "verbs_forwards")
    sp.add_argument("names", nargs="*", metavar="NAME", help="instances (default: all)")
    fmt(sp)
