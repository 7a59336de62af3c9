"""The API's models for port forwards: ``forward``, ``forward --remove``, ``forwards``, and the
``forwards`` of ``info`` and ``list``.

Part of :mod:`ketch.api.models`, which re-exports every name here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from ketch.api.common import MAX_TEXT, Body, Reply

#: A rule as written on the command line: ``[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]``.
Rule = Annotated[
    str, Meta(min_length=1, max_length=64, description="[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]")
]
MAX_RULES = 64  # explicit forwards given to one launch


class ForwardInfo(Reply):
    """One forward of an instance (``host_port`` null: not forwarded, ``note`` says why)."""

    host_address: str
    host_port: int | None
    guest_port: int
    protocol: Literal["tcp", "udp"]
    type: Literal["automatic", "explicit"]
    guest_address: str  # what the guest listens on (automatic forwards)
    active: bool
    note: str  # why a port is another one, or why it is not forwarded


class ForwardBody(Body):
    rule: Rule


class ForwardResult(Reply):
    name: str
    rule: str
    changed: bool


class ForwardsQuery(Body):
    names: Annotated[str, Meta(max_length=MAX_TEXT, description="comma-separated")] = ""


class ForwardsReply(Reply):
    errors: list[str]
    forwards: dict[str, list[ForwardInfo]]
