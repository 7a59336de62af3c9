"""The bodies, query parameters, replies and stream events of ketchd's API, as msgspec Structs.

Request bodies and query parameters forbid unknown fields and bound every
value (``msgspec.Meta``); replies accept unknown fields (a newer daemon may
add some) but not missing or mistyped ones.  Shapes are Multipass's where
Multipass has one (``list``, ``info``, ``find``), so ``--format json``
prints exactly what the daemon sent.

The models live by area: :mod:`~ketch.api.common` (limits, bounded value
types, the ``Body`` and ``Reply`` bases, the error reply),
:mod:`~ketch.api.instances`, :mod:`~ketch.api.forwards`, :mod:`~ketch.api.snapshots`,
:mod:`~ketch.api.hosts`,
:mod:`~ketch.api.system` (version, images, settings, doctor) and
:mod:`~ketch.api.events` (the stream events).  This module re-exports every
one of them, and is the one to import (``from ketch.api import models as m``;
the route table's ``"m.ListReply"`` names resolve here), because of what
follows.

msgspec imports ``typing_extensions`` when it is installed, only for
``get_type_hints`` (and TypedDict's ``Required``), which Python 3.11's own
:mod:`typing` has; that import (with :mod:`inspect`, :mod:`ast`, :mod:`dis`
behind it) costs ``ketch list`` about 8 ms, a sixth of its budget.  So msgspec
is first imported here with ``typing_extensions`` hidden, and falls back to
:mod:`typing` as it is written to; the module stays importable for everyone
else afterwards.
"""

from __future__ import annotations

import sys

if "msgspec" not in sys.modules and "typing_extensions" not in sys.modules:
    sys.modules["typing_extensions"] = None  # type: ignore[assignment]  # "not installed"
    try:
        import msgspec  # noqa: F401  (imported for its side effect: first, and lightly)
    finally:
        del sys.modules["typing_extensions"]

# (after msgspec's first import, above: the parts import it, light by then)
from ketch.api.common import (
    MAX_BODY,
    MAX_DAYS,
    MAX_DELAY,
    MAX_TEXT,
    MAX_TIMEOUT,
    Body,
    Empty,
    ErrorDetail,
    ErrorReply,
    MountInfo,
    Name,
    NoQuery,
    Reply,
    Size,
    SnapshotName,
    Text,
    Timeout,
)
from ketch.api.events import (
    AnyEvent,
    ErrorEvent,
    Event,
    OperationEvent,
    ProgressEvent,
    ResultEvent,
    StepEvent,
    WaitingEvent,
    WarningEvent,
    decode_event,
)
from ketch.api.forwards import (
    ForwardBody,
    ForwardInfo,
    ForwardResult,
    ForwardsQuery,
    ForwardsReply,
)
from ketch.api.hosts import (
    HostAddBody,
    HostAddReply,
    HostListReply,
    HostName,
    HostRemoveReply,
    HostRow,
    HostsQuery,
    HostUriText,
)
from ketch.api.instances import (
    CloneBody,
    CloneResult,
    DeleteBody,
    DeleteResult,
    Disk,
    Inconsistency,
    InfoEntry,
    InfoQuery,
    InfoReply,
    LaunchBody,
    ListEntry,
    ListReply,
    Memory,
    MountPath,
    NameResult,
    NamesQuery,
    PurgeResult,
    SshAddress,
    SshTargetReply,
    StartBody,
    StartResult,
    StopBody,
)
from ketch.api.mounts import (
    MountBody,
    MountRequest,
    MountResult,
    UmountBody,
)
from ketch.api.remote import AuthenticateBody, AuthenticateReply, SshKeysReply
from ketch.api.snapshots import (
    RestoreBody,
    RestoreResult,
    SnapshotBody,
    SnapshotInfo,
    SnapshotListEntry,
    SnapshotListReply,
    SnapshotResult,
)
from ketch.api.system import (
    BuildBody,
    BuildResult,
    CachedImage,
    DoctorBody,
    DoctorResult,
    Finding,
    FindQuery,
    FindReply,
    FindRow,
    ImagesReply,
    NetworkRow,
    NetworksReply,
    PruneBody,
    PruneReply,
    SetReply,
    SettingBody,
    SettingKeysReply,
    SettingReply,
    TemplateInfo,
    VersionReply,
    WarmBody,
)
from ketch.api.watch import (
    AnyWatchEvent,
    DashboardBody,
    DashboardReply,
    EndedEvent,
    InconsistencyEvent,
    InstanceEvent,
    LaggedEvent,
    RemovedEvent,
    SnapshotEvent,
    StartedEvent,
    WatchEvent,
    WatchInstance,
    WatchOperation,
    WatchResult,
    decode_watch_event,
)

__all__ = [
    "MAX_BODY",
    "MAX_DAYS",
    "MAX_DELAY",
    "MAX_TEXT",
    "MAX_TIMEOUT",
    "AnyEvent",
    "AnyWatchEvent",
    "AuthenticateBody",
    "AuthenticateReply",
    "Body",
    "BuildBody",
    "BuildResult",
    "CachedImage",
    "CloneBody",
    "CloneResult",
    "DashboardBody",
    "DashboardReply",
    "DeleteBody",
    "DeleteResult",
    "Disk",
    "DoctorBody",
    "DoctorResult",
    "Empty",
    "EndedEvent",
    "ErrorDetail",
    "ErrorEvent",
    "ErrorReply",
    "Event",
    "FindQuery",
    "FindReply",
    "FindRow",
    "Finding",
    "ForwardBody",
    "ForwardInfo",
    "ForwardResult",
    "ForwardsQuery",
    "ForwardsReply",
    "HostAddBody",
    "HostAddReply",
    "HostListReply",
    "HostName",
    "HostRemoveReply",
    "HostRow",
    "HostUriText",
    "HostsQuery",
    "ImagesReply",
    "Inconsistency",
    "InconsistencyEvent",
    "InfoEntry",
    "InfoQuery",
    "InfoReply",
    "InstanceEvent",
    "LaggedEvent",
    "LaunchBody",
    "ListEntry",
    "ListReply",
    "Memory",
    "MountBody",
    "MountInfo",
    "MountPath",
    "MountRequest",
    "MountResult",
    "Name",
    "NameResult",
    "NamesQuery",
    "NetworkRow",
    "NetworksReply",
    "NoQuery",
    "OperationEvent",
    "ProgressEvent",
    "PruneBody",
    "PruneReply",
    "PurgeResult",
    "RemovedEvent",
    "Reply",
    "RestoreBody",
    "RestoreResult",
    "ResultEvent",
    "SetReply",
    "SettingBody",
    "SettingKeysReply",
    "SettingReply",
    "Size",
    "SnapshotBody",
    "SnapshotEvent",
    "SnapshotInfo",
    "SnapshotListEntry",
    "SnapshotListReply",
    "SnapshotName",
    "SnapshotResult",
    "SshAddress",
    "SshKeysReply",
    "SshTargetReply",
    "StartBody",
    "StartResult",
    "StartedEvent",
    "StepEvent",
    "StopBody",
    "TemplateInfo",
    "Text",
    "Timeout",
    "UmountBody",
    "VersionReply",
    "WaitingEvent",
    "WarmBody",
    "WarningEvent",
    "WatchEvent",
    "WatchInstance",
    "WatchOperation",
    "WatchResult",
    "decode_event",
    "decode_watch_event",
]
