"""The route table of ketchd's API: one declaration per route.

A :class:`Route` names its method, path, request body, query parameters,
reply (for a read) or stream result (for an operation, whose 200 answer is
NDJSON events ending in a ``result`` or ``error``).  The daemon binds each
route to the handler method of the same ``name``; the client sends requests
and decodes replies through the same route; the OpenAPI document is made
from this table.  Adding a route is one :class:`Route` here (listed in
:data:`ROUTES`) and one handler method of the same name on
:class:`ketch.daemon.api.Api`, which returns the reply (a model, or a dict
the model checks), an ``Op`` (a new operation to stream) or ``Events`` (a
stream it already has, e.g. re-attaching to an operation in flight); see
:mod:`ketch.daemon.wire`.

Order matters: aiohttp takes the first route whose path matches.
"""

from __future__ import annotations

import importlib

from ketch.hints import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from typing import Any

    from ketch.api import models as m
    from ketch.api import operations as o

B = TypeVar("B", bound="m.Body")
R = TypeVar("R", bound="m.Reply")

STREAM_TYPE = "application/x-ndjson"


class Route(Generic[B, R]):
    """One API route.  ``reply`` is the JSON answer, or the stream's result when ``streamed``.

    (A plain class, not a dataclass: ``dataclasses`` would cost ``ketch list`` a
    millisecond and a half of import for nothing.)  The models are named here
    (``"m.ListReply"``: :mod:`ketch.api.models`, ``"o.…"``: :mod:`ketch.api.operations`)
    and imported when first asked for, so the CLI can send its request before it
    pays for msgspec and the models, and import them while the daemon answers.
    """

    __slots__ = ("_body", "_query", "_reply", "method", "name", "path", "streamed", "summary")

    def __init__(
        self,
        name: str,
        method: str,
        path: str,
        summary: str,
        reply: str,
        body: str | None = None,  # None: the route reads no body
        query: str = "m.NoQuery",
        streamed: bool = False,
    ) -> None:
        self.name = name
        self.method = method
        self.path = path
        self.summary = summary
        self._reply = reply
        self._body = body
        self._query = query
        self.streamed = streamed

    @property
    def reply(self) -> type[R]:
        """The reply (or stream result) model, imported on first use."""
        model: type[R] = _model(self._reply)
        return model

    @property
    def body(self) -> type[B] | None:
        """The request body model (None: no body), imported on first use."""
        model: type[B] | None = None if self._body is None else _model(self._body)
        return model

    @property
    def has_body(self) -> bool:
        """Whether requests along the route carry a body (known without importing its model)."""
        return self._body is not None

    @property
    def query(self) -> type[m.Body]:
        """The query parameters' model, imported on first use."""
        model: type[m.Body] = _model(self._query)
        return model

    def __repr__(self) -> str:
        return f"Route({self.method} {self.path} -> {self.name})"

    def url(self, **params: str) -> str:
        """The path with its ``{params}`` filled in (each quoted as one segment)."""
        if not params:
            return self.path
        return self.path.format(**{k: segment(v) for k, v in params.items()})


# RFC 3986's unreserved characters: what urllib.parse.quote(text, safe="") leaves as it is.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def segment(text: str) -> str:
    """``text`` quoted as one path segment, as ``urllib.parse.quote(text, safe="")`` (pure).

    Written out because ``urllib.parse`` (with ``ipaddress``, which it imports)
    would cost ``ketch exec`` and ``info`` 2-3 ms of start-up.
    """
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in text.encode())


VERSION: Route[m.Empty, m.VersionReply] = Route(
    "version", "GET", "/v1/version", "daemon version", "m.VersionReply"
)
LIST: Route[m.Empty, m.ListReply] = Route(
    "list", "GET", "/v1/instances", "list instances, as Multipass", "m.ListReply"
)
INFO: Route[m.Empty, m.InfoReply] = Route(
    "info", "GET", "/v1/info", "instance and INSTANCE.SNAPSHOT details, as Multipass",
    "m.InfoReply", query="m.InfoQuery",
)  # fmt: skip
LAUNCH: Route[m.LaunchBody, m.NameResult] = Route(
    "launch", "POST", "/v1/instances", "launch an instance", "m.NameResult",
    body="m.LaunchBody", streamed=True,
)  # fmt: skip
SNAPSHOT: Route[m.SnapshotBody, m.SnapshotResult] = Route(
    "snapshot_take", "POST", "/v1/instances/{name}/snapshots", "snapshot a stopped instance",
    "m.SnapshotResult", body="m.SnapshotBody", streamed=True,
)  # fmt: skip
RESTORE: Route[m.RestoreBody, m.RestoreResult] = Route(
    "snapshot_restore", "POST", "/v1/instances/{name}/snapshots/{snapshot}/restore",
    "restore a snapshot (destructive, or snapshot_first)", "m.RestoreResult",
    body="m.RestoreBody", streamed=True,
)  # fmt: skip
SNAPSHOT_DELETE: Route[m.Empty, m.SnapshotResult] = Route(
    "snapshot_delete", "POST", "/v1/instances/{name}/snapshots/{snapshot}/delete",
    "delete a snapshot", "m.SnapshotResult", body="m.Empty", streamed=True,
)  # fmt: skip
CLONE: Route[m.CloneBody, m.CloneResult] = Route(
    "clone", "POST", "/v1/instances/{name}/clone", "clone a stopped instance", "m.CloneResult",
    body="m.CloneBody", streamed=True,
)  # fmt: skip
MOUNT: Route[m.MountBody, m.MountResult] = Route(
    "mount", "POST", "/v1/instances/{name}/mounts",
    "mount host directories (classic: at once if running; native: from the next start)",
    "m.MountResult", body="m.MountBody", streamed=True,
)  # fmt: skip
UMOUNT: Route[m.UmountBody, m.MountResult] = Route(
    "umount", "DELETE", "/v1/instances/{name}/mounts", "unmount (no targets: all mounts)",
    "m.MountResult", body="m.UmountBody", streamed=True,
)  # fmt: skip
SNAPSHOTS: Route[m.Empty, m.SnapshotListReply] = Route(
    "snapshot_list", "GET", "/v1/snapshots", "snapshots per instance, as Multipass's list",
    "m.SnapshotListReply", query="m.NamesQuery",
)  # fmt: skip
START: Route[m.StartBody, m.StartResult] = Route(
    "start", "POST", "/v1/instances/{name}/start", "start (or resume) an instance",
    "m.StartResult", body="m.StartBody", streamed=True,
)  # fmt: skip
STOP: Route[m.StopBody, m.NameResult] = Route(
    "stop", "POST", "/v1/instances/{name}/stop", "stop: graceful, --force, --time, --cancel",
    "m.NameResult", body="m.StopBody", streamed=True,
)  # fmt: skip
SUSPEND: Route[m.Empty, m.NameResult] = Route(
    "suspend", "POST", "/v1/instances/{name}/suspend", "suspend an instance", "m.NameResult",
    body="m.Empty", streamed=True,
)  # fmt: skip
RESTART: Route[m.StartBody, m.StartResult] = Route(
    "restart", "POST", "/v1/instances/{name}/restart", "restart an instance", "m.StartResult",
    body="m.StartBody", streamed=True,
)  # fmt: skip
DELETE: Route[m.DeleteBody, m.DeleteResult] = Route(
    "delete", "POST", "/v1/instances/{name}/delete", "delete (or purge) an instance",
    "m.DeleteResult", body="m.DeleteBody", streamed=True,
)  # fmt: skip
RECOVER: Route[m.Empty, m.NameResult] = Route(
    "recover", "POST", "/v1/instances/{name}/recover", "recover a deleted instance",
    "m.NameResult", body="m.Empty", streamed=True,
)  # fmt: skip
PURGE: Route[m.Empty, m.PurgeResult] = Route(
    "purge", "POST", "/v1/purge", "purge deleted instances", "m.PurgeResult", body="m.Empty",
    streamed=True,
)  # fmt: skip
DOCTOR: Route[m.DoctorBody, m.DoctorResult] = Route(
    "doctor", "POST", "/v1/doctor", "find and repair inconsistencies", "m.DoctorResult",
    body="m.DoctorBody", streamed=True,
)  # fmt: skip
SSH: Route[m.Empty, m.SshTargetReply] = Route(
    "ssh", "GET", "/v1/instances/{name}/ssh", "SSH target with the pinned host key",
    "m.SshTargetReply",
)  # fmt: skip
FIND: Route[m.Empty, m.FindReply] = Route(
    "find", "GET", "/v1/find", "images per remote", "m.FindReply", query="m.FindQuery"
)
IMAGES: Route[m.Empty, m.ImagesReply] = Route(
    "image_list", "GET", "/v1/images", "cached images", "m.ImagesReply"
)
BUILD: Route[m.BuildBody, m.BuildResult] = Route(
    "image_build", "POST", "/v1/images/build", "build tiny or debian-12", "m.BuildResult",
    body="m.BuildBody", streamed=True,
)  # fmt: skip
PRUNE: Route[m.PruneBody, m.PruneReply] = Route(
    "image_prune", "POST", "/v1/images/prune", "remove unused cached images", "m.PruneReply",
    body="m.PruneBody",
)  # fmt: skip
WARM: Route[m.WarmBody, m.TemplateInfo] = Route(
    "image_warm", "POST", "/v1/images/warm", "make a warm-launch template", "m.TemplateInfo",
    body="m.WarmBody", streamed=True,
)  # fmt: skip
SETTING_KEYS: Route[m.Empty, m.SettingKeysReply] = Route(
    "setting_keys", "GET", "/v1/settings", "every settable key", "m.SettingKeysReply"
)
NETWORKS: Route[m.Empty, m.NetworksReply] = Route(
    "networks", "GET", "/v1/networks", "host interfaces an instance can be bridged to",
    "m.NetworksReply",
)  # fmt: skip
GET_SETTING: Route[m.Empty, m.SettingReply] = Route(
    "get_setting", "GET", "/v1/settings/{key}", "read a setting", "m.SettingReply"
)
SET_SETTING: Route[m.SettingBody, m.SetReply] = Route(
    "set_setting", "PUT", "/v1/settings/{key}", "write a setting", "m.SetReply",
    body="m.SettingBody",
)  # fmt: skip
FORWARD_ADD: Route[m.ForwardBody, m.ForwardResult] = Route(
    "forward_add", "POST", "/v1/instances/{name}/forwards",
    "add an explicit port forward (made at once when the instance runs)", "m.ForwardResult",
    body="m.ForwardBody",
)  # fmt: skip
FORWARD_REMOVE: Route[m.ForwardBody, m.ForwardResult] = Route(
    "forward_remove", "POST", "/v1/instances/{name}/forwards/remove",
    "remove an explicit port forward", "m.ForwardResult", body="m.ForwardBody",
)  # fmt: skip
FORWARDS: Route[m.Empty, m.ForwardsReply] = Route(
    "forward_list", "GET", "/v1/forwards", "port forwards per instance, automatic and explicit",
    "m.ForwardsReply", query="m.ForwardsQuery",
)  # fmt: skip
HOST_ADD: Route[m.HostAddBody, m.HostAddReply] = Route(
    "host_add", "POST", "/v1/hosts",
    "add a libvirt host (qemu:///system, qemu+ssh://); probed once added, stored even when "
    "it does not answer", "m.HostAddReply", body="m.HostAddBody",
)  # fmt: skip
HOST_LIST: Route[m.Empty, m.HostListReply] = Route(
    "host_list", "GET", "/v1/hosts",
    "every host, local first, each probed now (all at once, each within the timeout)",
    "m.HostListReply", query="m.HostsQuery",
)  # fmt: skip
HOST_REMOVE: Route[m.Empty, m.HostRemoveReply] = Route(
    "host_remove", "DELETE", "/v1/hosts/{name}",
    "remove a host (refused while it has instances; local cannot be removed)",
    "m.HostRemoveReply",
)  # fmt: skip

OPERATIONS: Route[m.Empty, o.OperationsReply] = Route(
    "operations", "GET", "/v1/operations", "operations in flight and what each waits for",
    "o.OperationsReply",
)  # fmt: skip
FOLLOW: Route[m.Empty, o.OperationResult] = Route(
    "operation_follow", "GET", "/v1/operations/{id}",
    "re-attach to an operation's events: the kept ones replayed (bounded), then live; "
    "replay=false: from now on", "o.OperationResult", query="o.FollowQuery", streamed=True,
)  # fmt: skip
CANCEL: Route[m.Empty, o.CancelReply] = Route(
    "operation_cancel", "DELETE", "/v1/operations/{id}",
    "cancel an operation that waits (for a lock, or its guest's readiness); 409 when it "
    "is past that", "o.CancelReply",
)  # fmt: skip
AUTHENTICATE: Route[m.AuthenticateBody, m.AuthenticateReply] = Route(
    "authenticate", "POST", "/v1/authenticate",
    "enrol the client's certificate with the passphrase (the one route open to untrusted "
    "clients over TLS; failures are rate-limited)", "m.AuthenticateReply",
    body="m.AuthenticateBody",
)  # fmt: skip
SSH_KEYS: Route[m.Empty, m.SshKeysReply] = Route(
    "ssh_keys", "GET", "/v1/instances/{name}/ssh-keys",
    "the guest's SSH key and pinned host key, for a remote client's exec", "m.SshKeysReply",
)  # fmt: skip
WATCH: Route[m.Empty, m.WatchResult] = Route(
    "watch", "GET", "/v1/events",
    "live events: a snapshot, then instances changed, inconsistencies found, operations "
    "started and ended (NDJSON, never ends; a slow reader is sent lagged and a new snapshot)",
    "m.WatchResult", streamed=True,
)  # fmt: skip
DASHBOARD: Route[m.DashboardBody, m.DashboardReply] = Route(
    "dashboard", "POST", "/v1/dashboard",
    "open the web dashboard on 127.0.0.1 (once) and make a one-time login token",
    "m.DashboardReply", body="m.DashboardBody",
)  # fmt: skip

ROUTES: tuple[Route[Any, Any], ...] = (
    VERSION, LIST, INFO, LAUNCH, SNAPSHOT, RESTORE, SNAPSHOT_DELETE, CLONE, MOUNT, UMOUNT,
    SNAPSHOTS,
    START, STOP, SUSPEND, RESTART, DELETE, RECOVER, PURGE, DOCTOR, SSH, FIND, IMAGES,
    BUILD, PRUNE, WARM, SETTING_KEYS, GET_SETTING, SET_SETTING, OPERATIONS, FOLLOW, CANCEL,
    FORWARD_ADD, FORWARD_REMOVE, FORWARDS, NETWORKS, AUTHENTICATE, SSH_KEYS, WATCH, DASHBOARD,
    HOST_ADD, HOST_LIST, HOST_REMOVE,
)  # fmt: skip


def _model(ref: str) -> Any:
    """``"m.Name"`` or ``"o.Name"``: that class of the models or the operations module."""
    prefix, _, name = ref.partition(".")
    module = "ketch.api.models" if prefix == "m" else "ketch.api.operations"
    return getattr(importlib.import_module(module), name)
