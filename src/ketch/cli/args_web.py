"""The arguments of the verbs of the live view: ``watch`` and ``dashboard``."""

from __future__ import annotations

from ketch.cli.parser import Verbs


def declare(v: Verbs) -> None:
    """Declare the web verbs' arguments."""
    sp = v.cmd("watch", "verbs_web")
    sp.add_argument(
        "--format", choices=("table", "json"), default="table", help="json: the events as sent"
    )
