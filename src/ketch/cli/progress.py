"""Showing an operation's events: rich progress bars on a terminal, plain lines elsewhere.

Events go to stderr, so stdout carries only the command's result.
"""

from __future__ import annotations

import sys

from ketch.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any

    from ketch.api import models as m


class Plain:
    """One line per step and warning; byte progress at 10 % steps."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def __enter__(self) -> Plain:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __call__(self, event: m.AnyEvent) -> None:
        from ketch.api import models as m  # loaded by the client's first event already

        if isinstance(event, m.StepEvent):
            print(f"{event.message}", file=sys.stderr, flush=True)
        elif isinstance(event, m.WarningEvent | m.WaitingEvent):
            prefix = "warning: " if isinstance(event, m.WarningEvent) else ""
            print(f"{prefix}{event.message}", file=sys.stderr, flush=True)
        elif isinstance(event, m.ProgressEvent):
            total, done, label = event.total, event.done, event.label
            if total:
                tenth = done * 10 // int(total)
                if self._last.get(label) != tenth:
                    self._last[label] = tenth
                    print(f"{label}: {tenth * 10}%", file=sys.stderr, flush=True)


class Rich:
    """Progress bars with bytes, rate and ETA; a spinner line per step."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.tasks: dict[str, Any] = {}
        self.step: Any = None

    def __enter__(self) -> Rich:
        self.progress.__enter__()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.__exit__(t, e, tb)

    def __call__(self, event: m.AnyEvent) -> None:
        from ketch.api import models as m  # loaded by the client's first event already

        if isinstance(event, m.StepEvent):
            self.console.print(f"[bold]{event.message}[/]")
        elif isinstance(event, m.WarningEvent):
            self.console.print(f"[yellow]warning:[/] {event.message}")
        elif isinstance(event, m.WaitingEvent):
            self.console.print(f"[cyan]{event.message}[/]")
        elif isinstance(event, m.ProgressEvent):
            label = event.label
            if label not in self.tasks:
                self.tasks[label] = self.progress.add_task(label, total=event.total)
            self.progress.update(self.tasks[label], completed=event.done, total=event.total)


def renderer() -> Plain | Rich:
    return Rich() if sys.stderr.isatty() else Plain()


def interrupted(client: Any) -> None:
    """After Ctrl-C during a streamed verb: ask the daemon to cancel, say what came of it.

    ``client`` is a :class:`ketch.client.Client` (not imported here: kept light).
    The caller exits 130 in every case.
    """
    from ketch.errors import KetchError

    op = client.operation
    if op is None:
        print(
            "interrupted before ketchd answered; an operation it had begun goes on in the "
            "daemon (one still waiting for its turn is dropped); see 'ketch list'",
            file=sys.stderr,
        )
        return
    try:
        reply = client.cancel(op)
    except KeyboardInterrupt:
        reply = {"cancelled": False}
    except KetchError as exc:
        if exc.code == "operation-ended":
            print(f"interrupted: {exc.message}", file=sys.stderr)
            return
        if exc.code != "not-cancellable":
            print(f"could not cancel operation {op}: {exc.message}", file=sys.stderr)
        reply = {"cancelled": False}
    if reply.get("cancelled"):
        print(f"cancelled: {reply.get('message')}", file=sys.stderr)
    else:
        print(
            f"interrupted: the operation goes on in the daemon (operation {op}); see 'ketch list'",
            file=sys.stderr,
        )
