"""The arguments of the verbs about ketch itself: images, settings, doctor, version, the daemon."""

from __future__ import annotations

from ketch.cli.parser import Parser, Verbs


def declare(v: Verbs) -> None:
    """Declare the system verbs' arguments."""
    cmd, fmt, timeout, names = v.cmd, v.fmt, v.timeout, v.names
    sp = cmd("find", "verbs_images")
    sp.add_argument("query", nargs="?", help="[REMOTE:]TEXT")
    fmt(sp)
    sp.add_argument(
        "--show-unsupported", action="store_true", help="also images the remote marks unsupported"
    )
    sp.add_argument("--force-update", action="store_true", help="read the image catalogues afresh")
    sp.add_argument(
        "--only-images",
        action="store_true",
        help="show only images (ketch has no blueprints: every result is an image)",
    )
    sp = cmd("get", "verbs_system")
    sp.add_argument("key", nargs="?", metavar="KEY")
    sp.add_argument("--keys", action="store_true", help="list the settable keys (or check KEY)")
    sp.add_argument("--raw", action="store_true", help='an empty value as "", not <empty>')
    sp = cmd("set", "verbs_system")
    sp.add_argument("assignment", metavar="KEY[=VALUE]", help="with no value, it is asked for")

    sp = cmd("image", "verbs_images")
    isub = sp.add_subparsers(
        dest="image_command", metavar="ACTION", parser_class=Parser, required=True
    )
    b = isub.add_parser("build", help="build an image (tiny, debian-12)")
    b.add_argument("name", metavar="NAME", help="tiny or debian-12")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    ls = isub.add_parser("list", help="list cached images")
    fmt(ls)
    pr = isub.add_parser("prune", help="remove cached images unused for DAYS")
    pr.add_argument("--days", type=float, default=14.0)
    w = isub.add_parser("warm", help="make a warm-launch template of an image")
    w.add_argument("name", metavar="IMAGE", help="the image, as launch names it (e.g. tiny)")
    w.add_argument("-c", "--cpus", type=int, default=1, help="the launches' CPUs (default 1)")
    w.add_argument("-m", "--memory", default="1G", help="the launches' memory (default 1G)")
    w.add_argument(
        "--firmware",
        choices=("bios", "uefi"),
        help="the launches' firmware, as launch --firmware (default: what the image needs)",
    )

    sp = cmd("doctor", "verbs_system")
    names(sp, all_=False)
    sp.add_argument("--fix", action="store_true", help="repair what can be repaired safely")
    sp.add_argument("--format", choices=("table", "json"), default="table", help="output format")

    sp = cmd("version", "verbs_system")
    fmt(sp)
    sp = cmd("networks", "verbs_system")
    fmt(sp)
    sp = cmd("help", "verbs_system")
    sp.add_argument("topic", nargs="?", metavar="COMMAND")
    sp = cmd("wait-ready", "verbs_wait")
    sp.add_argument("name", nargs="?", metavar="NAME", help="an instance (default: only ketchd)")
    timeout(sp)
    sp = cmd("daemon", "verbs_system")
    sp.add_argument(
        "--install-unit",
        action="store_true",
        help="write and enable a systemd unit that starts ketchd at boot",
    )
    sp.add_argument("--system", action="store_true",
                    help="with --install-unit: a system unit, not the user's")  # fmt: skip
    sp = cmd("completion", "verbs_system")
    sp.add_argument("shell", choices=("bash", "zsh"))
