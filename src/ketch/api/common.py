"""The API's common ground: its limits, bounded value types, base classes and error reply.

Part of :mod:`ketch.api.models`, which re-exports every name here; import
them from there (it imports msgspec first, lightly: see its docstring).
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

# -- limits ----------------------------------------------------------------------------

MAX_BODY = 8 * 1024 * 1024  # bytes in one request body (a NoCloud seed holds far more)
MAX_TIMEOUT = 3600.0  # seconds a launch may wait for its guest
MAX_DELAY = 525_600.0  # minutes a delayed stop may wait (a year)
MAX_DAYS = 36_500.0  # days for image prune (a century)
MAX_TEXT = 64 * 1024  # characters of a comment or setting value

Name = Annotated[str, Meta(min_length=1, max_length=63, description="an instance name")]
SnapshotName = Annotated[str, Meta(min_length=1, max_length=63, description="a snapshot name")]
Size = Annotated[
    str, Meta(min_length=1, max_length=32, description="a size: bytes, or with K, M, G, T")
]
Timeout = Annotated[float, Meta(gt=0, le=MAX_TIMEOUT, description="seconds")]
Text = Annotated[str, Meta(max_length=MAX_TEXT)]


class Body(Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies and query parameters: unknown fields are refused."""


class Reply(Struct, kw_only=True):
    """Base of replies: unknown fields are ignored, missing ones are an error."""


# -- errors ----------------------------------------------------------------------------


class ErrorDetail(Reply):
    code: str
    message: str
    hint: str | None = None
    exit_code: int = 2


class ErrorReply(Reply):
    """The body of every 4xx/5xx answer."""

    error: ErrorDetail


# -- bodies with nothing in them -------------------------------------------------------


class Empty(Body):
    """A body with nothing in it (``{}``; no body at all is the same)."""


class NoQuery(Body):
    """A route that takes no query parameters."""


class MountInfo(Reply):
    """One mount in ``info``, keyed by its guest path: Multipass's three keys, then ketch's.

    A mapping reads ``HOST:GUEST``, ``GUEST`` being ``default`` for the guest's default user.
    """

    source_path: str
    uid_mappings: list[str]
    gid_mappings: list[str]
    type: str  # "classic" or "native"
    active: bool | None  # in place in the guest now; None when it cannot be known (not running)
    # a classic mount's stream to its host side now: "virtio-serial" or "ssh" (None: none runs)
    transport: str | None = None
