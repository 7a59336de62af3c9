"""The wire models of operations as a resource (``/v1/operations``).

Every state-changing request's stream starts with an ``operation`` event
(:class:`ketch.api.models.OperationEvent`) carrying the id used here.
"""

from typing import Literal

from ketch.api.models import Body, Reply


class WaitsFor(Reply, omit_defaults=True):
    """What a waiting operation waits for: a lock (held by which operation), or readiness."""

    type: Literal["lock", "readiness"]
    instance: str
    operation: str | None = None  # "lock": the id of the operation holding it (None: recovery)
    kind: str | None = None  # "lock": what that operation is


class OperationInfo(Reply):
    id: str
    kind: str
    instances: list[str]
    started: float  # seconds since the epoch
    state: Literal["waiting", "running", "done"]
    waits_for: WaitsFor | None
    step: str | None  # its last step
    outcome: Literal["ok", "failed", "cancelled", "dropped"] | None  # when done


class OperationsReply(Reply):
    """The operations in flight, oldest first."""

    operations: list[OperationInfo]


class FollowQuery(Body):
    replay: bool = True  # replay the events it kept so far (bounded), then follow


class CancelReply(Reply):
    """What ``DELETE /v1/operations/{id}`` did: cancelled, or asked and not ended yet."""

    id: str
    cancelled: bool
    outcome: Literal["ok", "failed", "cancelled", "dropped"] | None
    message: str


class OperationResult(Reply):
    """A re-attached stream ends with the followed operation's own result (its route's)."""
