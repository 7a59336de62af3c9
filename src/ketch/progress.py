"""The reporter interface long operations use to tell the user what happens.

The daemon gives each operation a reporter that streams these events to the
client (which draws progress bars on a terminal, plain lines elsewhere);
tests and direct callers use :class:`ListReporter` or :data:`NULL`.
"""

from __future__ import annotations

from typing import Any, Protocol


class Reporter(Protocol):
    """Receives an operation's steps, byte progress and warnings."""

    def step(self, message: str) -> None:
        """A new step started ("Verifying image", "Waiting for SSH")."""

    def progress(self, label: str, done: int, total: int | None) -> None:
        """Byte (or unit) progress of the current step."""

    def warn(self, message: str) -> None:
        """Something went wrong but the operation carries on."""


class ListReporter:
    """Keeps every event in a list: for tests and synchronous callers."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def step(self, message: str) -> None:
        self.events.append({"type": "step", "message": message})

    def progress(self, label: str, done: int, total: int | None) -> None:
        self.events.append({"type": "progress", "label": label, "done": done, "total": total})

    def warn(self, message: str) -> None:
        self.events.append({"type": "warning", "message": message})

    @property
    def warnings(self) -> list[str]:
        return [e["message"] for e in self.events if e["type"] == "warning"]

    @property
    def steps(self) -> list[str]:
        return [e["message"] for e in self.events if e["type"] == "step"]


class _Null:
    def step(self, message: str) -> None:
        pass

    def progress(self, label: str, done: int, total: int | None) -> None:
        pass

    def warn(self, message: str) -> None:
        pass


NULL: Reporter = _Null()
