"""The arguments of the verbs of the live view: ``watch`` and ``dashboard``."""

from __future__ import annotations

from ketch.cli.parser import Verbs


def declare(v: Verbs) -> None:
    """Declare the web verbs' arguments."""
    sp = v.cmd("watch", "verbs_web")
    sp.add_argument(
        "--format", choices=("table", "json"), default="table", help="json: the events as sent"
    )
    sp = v.cmd("dashboard", "verbs_web")
    sp.add_argument(
        "--port", type=int, default=0, help="the 127.0.0.1 port (default: any free one)"
    )
    sp.add_argument(
        "--ttl", type=float, default=120.0, metavar="SECONDS",
        help="how long the one-time login URL is good for (default 120)",
    )  # fmt: skip
    sp.add_argument("--no-browser", action="store_true", help="print the URL only")
