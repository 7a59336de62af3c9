"""The API's stream events: NDJSON, one per line; the last is ``result`` or ``error``.

Part of :mod:`ketch.api.models`, which re-exports every name here; import
them from there (it imports msgspec first, lightly: see its docstring).
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

from ketch.api.common import ErrorDetail


class Event(Struct, tag_field="type", kw_only=True):
    """Base of the stream events: ``type`` says which."""


class OperationEvent(Event, tag="operation", omit_defaults=True):
    """First event of a stream: the operation's id (``/v1/operations/{id}``).

    A re-attached stream also says how many kept events it replays and how many
    fell out of the bounded buffer before (both 0 with ``replay=false``).
    """

    id: str
    replayed: int | None = None
    dropped: int | None = None


class StepEvent(Event, tag="step"):
    message: str


class ProgressEvent(Event, tag="progress"):
    label: str
    done: int
    total: int | None


class WarningEvent(Event, tag="warning"):
    message: str


class WaitingEvent(Event, tag="waiting"):
    message: str


class ResultEvent(Event, tag="result"):
    """The operation's result; its shape is the route's result model."""

    result: dict[str, Any]


class ErrorEvent(Event, tag="error"):
    error: ErrorDetail


AnyEvent = (
    OperationEvent | StepEvent | ProgressEvent | WarningEvent | WaitingEvent | ResultEvent
    | ErrorEvent
)  # fmt: skip


def decode_event(line: bytes) -> AnyEvent:
    """One NDJSON line as an event (msgspec errors propagate)."""
    event: AnyEvent = msgspec.json.decode(line, type=AnyEvent)
    return event
