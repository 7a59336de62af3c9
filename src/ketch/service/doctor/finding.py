"""What ``ketch doctor`` reports: a :class:`Finding`, and the :data:`Repair` it may carry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ketch.api import models as m

Repair = Callable[[], Awaitable[str]]


@dataclass
class Finding:
    """One thing doctor found, and what ``--fix`` does about it."""

    instance: str
    code: str
    message: str
    fix: str
    repair: Repair | None = field(default=None, repr=False)
    outcome: str | None = None  # after --fix: what was done, or why not
    fixed: bool | None = None

    def to_reply(self) -> m.Finding:
        """The finding as the doctor result's model (the wire contract)."""
        return m.Finding(
            instance=self.instance,
            code=self.code,
            message=self.message,
            fix=self.fix,
            fixed=self.fixed,
            outcome=self.outcome,
        )
