"""The arguments of ``ketch host add|list|remove``: the hosts instances run on."""

from __future__ import annotations

from ketch.cli.parser import Parser, Verbs


def declare(v: Verbs) -> None:
    """Declare the host verb's arguments."""
    sp = v.cmd("host", "verbs_hosts")
    hsub = sp.add_subparsers(
        dest="host_command", metavar="ACTION", parser_class=Parser, required=True
    )
    add = hsub.add_parser("add", help="add a libvirt host (probed once added)")
    add.add_argument("name", metavar="NAME", help="the host's name in ketch")
    add.add_argument(
        "uri", metavar="URI", help="qemu:///system or qemu+ssh://[USER@]HOST[:PORT]/system"
    )
    add.add_argument(
        "--ssh-key", metavar="PATH", help="the private key ssh uses (qemu+ssh:// only)"
    )
    add.add_argument(
        "--known-hosts", metavar="PATH",
        help="the host keys to trust, a known_hosts file ketch keeps a copy of "
        "(default: ssh's own known_hosts of the user ketchd runs as)",
    )  # fmt: skip
    v.timeout_of(add, "how long the probe may take (default 10)")
    ls = hsub.add_parser("list", help="every host, probed now")
    v.fmt(ls)
    v.timeout_of(ls, "how long each host's probe may take (default 10)")
    rm = hsub.add_parser("remove", help="remove a host (refused while it has instances)")
    rm.add_argument("name", metavar="NAME")
