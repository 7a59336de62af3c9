"""The arguments of the remote-access verbs: ``authenticate`` (alias ``auth``)."""

from __future__ import annotations

from ketch.cli.parser import Verbs


def declare(v: Verbs) -> None:
    """Declare the remote verbs' arguments."""
    sp = v.cmd("authenticate", "verbs_remote")
    sp.add_argument(
        "passphrase",
        nargs="?",
        metavar="PASSPHRASE",
        help="the passphrase set with 'ketch set local.passphrase' (asked for when omitted)",
    )
