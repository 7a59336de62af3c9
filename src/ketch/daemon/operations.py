"""Handlers of operations as a resource (routes ``OPERATIONS``, ``FOLLOW``, ``CANCEL``).

* ``GET /v1/operations``: those in flight (id, kind, instances, started,
  state ``waiting``/``running``, what each waits for: a lock and the
  operation holding it, or its guest's readiness).
* ``GET /v1/operations/{id}``: re-attach to its stream.  By default the
  events it kept are replayed first (at most ``ops.REPLAY``; its first event
  says how many were replayed and how many fell out before), then it
  follows; ``?replay=false``: events from now on.  A finished operation
  answers with what it kept and its final event, for ``ops.KEEP_DONE`` s.
* ``DELETE /v1/operations/{id}``: cancel one that waits (for a lock, or for
  its guest's readiness; the instance is kept, as after a launch timeout);
  409 ``not-cancellable`` when it runs past that, ``operation-ended`` when it
  has ended.  The answer comes once the operation has ended (bounded).
"""

from __future__ import annotations

from typing import Any

import msgspec

from ketch.api import operations as o
from ketch.daemon.ops import Follow, Operations
from ketch.daemon.wire import Call


class OperationRoutes:
    """Mixed into :class:`ketch.daemon.api.Api` (the route table binds by name)."""

    ops: Operations

    async def operations(self, call: Call[None]) -> o.OperationsReply:
        ops = [o_.describe() for o_ in self.ops.in_flight()]
        return msgspec.convert({"operations": ops}, o.OperationsReply)

    async def operation_follow(self, call: Call[None]) -> Follow:
        query: o.FollowQuery = call.query
        return self.ops.follow(call.params["id"], replay=query.replay)

    async def operation_cancel(self, call: Call[None]) -> dict[str, Any]:
        return await self.ops.cancel(call.params["id"])
