"""The REST/JSON API of ketchd: one handler per route of :mod:`ketch.api.routes`.

Reads answer with JSON.  Operations that change something answer with a
stream of newline-delimited JSON events (``step``, ``progress``, ``warning``,
``waiting``), ending with one ``result`` or ``error`` event.  Errors carry a
stable code, a message, a hint and the exit code the CLI should use.

Each handler gets its request already decoded through the route's models
(:mod:`ketch.daemon.wire`), calls one service function (or hands one to the
operation table, under the instance's lock) and returns what is encoded.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from ketch import __version__
from ketch.api import models as m
from ketch.api.openapi import document
from ketch.api.routes import FORWARD_ADD, FORWARD_REMOVE, ROUTES, SET_SETTING
from ketch.daemon.auth import AuthRoutes
from ketch.daemon.events import WatchRoutes
from ketch.daemon.hosts import HostRoutes
from ketch.daemon.operations import OperationRoutes
from ketch.daemon.ops import Operations, QueueReporter
from ketch.daemon.tunnel import TUNNEL_PATH, TunnelRoutes
from ketch.daemon.web import DashboardRoutes
from ketch.daemon.wire import Call, Op, bind, errors, typed_result
from ketch.errors import InvalidArgument, RemoteError
from ketch.model import OperationKind
from ketch.service import clone as clone_uc
from ketch.service import delete as delete_uc
from ketch.service import doctor as doctor_uc
from ketch.service import forwards as forwards_uc
from ketch.service import guest as guest_uc
from ketch.service import images as images_uc
from ketch.service import info as info_uc
from ketch.service import inspect as inspect_uc
from ketch.service import launch as launch_uc
from ketch.service import lifecycle, names
from ketch.service import mounts as mounts_uc
from ketch.service import settings as settings_uc
from ketch.service import snapshots as snapshots_uc
from ketch.service.images import Images


def _names(text: str) -> list[str]:
    return [n for n in text.split(",") if n]


class Api(OperationRoutes, AuthRoutes, TunnelRoutes, WatchRoutes, DashboardRoutes, HostRoutes):
    """Route handlers bound to the daemon's context (``/v1/operations``, ``/v1/authenticate``,
    ``/v1/events``, ``/v1/dashboard``, ``/v1/hosts``: the mixins')."""

    def __init__(self, ops: Operations, images: Images) -> None:
        self.ops = ops
        self.ctx = ops.ctx
        self.images = images
        self.started = time.time()
        self.clone_names = clone_uc.NameReservations()
        # What the daemon does at once when a global setting changes (e.g. local.address:
        # listen there now); called with the new value (None: unset) before it is stored.
        self.setting_hooks: dict[str, Callable[[str | None], Awaitable[None]]] = {}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[errors], client_max_size=m.MAX_BODY)
        app.router.add_get("/openapi.json", self.openapi)
        app.router.add_get(TUNNEL_PATH, self.ssh_tunnel)  # a WebSocket: daemon/tunnel.py
        app.on_shutdown.append(self.close_watchers)
        app.on_shutdown.append(self.close_dashboard)
        for route in ROUTES:
            app.router.add_route(
                route.method, route.path, bind(route, getattr(self, route.name), self.ops)
            )
        return app

    # -- reads -------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(document())

    async def version(self, call: Call[None]) -> m.VersionReply:
        return m.VersionReply(ketchd=__version__, started=self.started)

    async def networks(self, call: Call[None]) -> m.NetworksReply:
        from ketch.service import network as network_uc

        rows = await network_uc.host_networks(self.ctx.network)
        return m.NetworksReply(
            list=[m.NetworkRow(name=n, type=t, description=d) for n, t, d in rows]
        )

    async def list(self, call: Call[None]) -> m.ListReply:
        await self.ops.settled()
        views = await inspect_uc.all_views(self.ctx)
        return m.ListReply(
            list=[inspect_uc.list_entry(v, forwards_uc.rows(self.ctx, v)) for v in views],
            hosts=1 + len(self.ctx.store.hosts()),
        )

    async def info(self, call: Call[None]) -> m.InfoReply:
        await self.ops.settled()
        q = call.query
        return await info_uc.info(self.ctx, _names(q.names), runtime=not q.no_runtime_information)

    async def snapshot_list(self, call: Call[None]) -> m.SnapshotListReply:
        await self.ops.settled()
        return info_uc.snapshot_listing(self.ctx, _names(call.query.names))

    async def ssh(self, call: Call[None]) -> m.SshTargetReply:
        return await guest_uc.ssh_info(self.ctx, call.params["name"])

    async def ssh_keys(self, call: Call[None]) -> m.SshKeysReply:
        from ketch.service import remote_access

        return await remote_access.ssh_keys(self.ctx, call.params["name"])

    async def find(self, call: Call[None]) -> m.FindReply:
        q = call.query
        rows = await self.images.find(
            q.query or None, show_unsupported=q.show_unsupported, force_update=q.force_update
        )
        return m.FindReply(images=rows)

    async def image_list(self, call: Call[None]) -> m.ImagesReply:
        from ketch.service import templates

        templates_ = await templates.infos(self.ctx)
        return m.ImagesReply(images=self.images.list_cached(), templates=templates_)

    async def setting_keys(self, call: Call[None]) -> m.SettingKeysReply:
        return m.SettingKeysReply(keys=settings_uc.keys(self.ctx))

    async def get_setting(self, call: Call[None]) -> m.SettingReply:
        key = call.params["key"]
        return m.SettingReply(key=key, value=await settings_uc.get(self.ctx, key))

    # -- operations -----------------------------------------------------------------

    async def launch(self, call: Call[m.LaunchBody]) -> Op:
        body = call.body
        if body.name:
            names.validate(body.name)
        name = body.name or names.random_name({r.spec.name for r in self.ctx.store.all()})
        req = launch_uc.LaunchRequest(
            image=body.image,
            name=name,
            cpus=body.cpus,
            memory=body.memory,
            disk=body.disk,
            cloud_init=body.cloud_init,
            timeout=body.timeout,
            firmware=body.firmware,
            forwards=body.forwards,
            networks=list(body.networks),
            bridged=body.bridged,
            cold=body.cold,
            cold_reason=launch_uc.native_mount_reason(
                [mounts_uc.from_request(r) for r in body.mounts]
            ),
            host=body.host,
            mounts=bool(body.mounts),
        )
        launch_uc.check_host(self.ctx, req)  # before anything is made
        if not body.mounts:
            return Op(
                [name], OperationKind.LAUNCH, lambda rep: launch_uc.launch(self.ctx, req, rep)
            )
        ctx, mounts = self.ctx, [mounts_uc.from_request(r) for r in body.mounts]
        allowed = settings_uc.mounts_allowed(ctx)
        mounts_uc.check_all(mounts, privileged=allowed)  # refused before anything is made

        async def launch_and_mount(rep: QueueReporter) -> m.NameResult:
            result = await launch_uc.launch(ctx, req, rep)
            await mounts_uc.add(ctx, name, mounts, rep, privileged=allowed)
            return result

        return Op([name], OperationKind.LAUNCH, launch_and_mount)

    async def mount(self, call: Call[m.MountBody]) -> Op:
        name, ctx = self._instance(call), self.ctx
        mounts = [mounts_uc.from_request(r) for r in call.body.mounts]
        allowed = settings_uc.mounts_allowed(ctx)

        async def op(rep: QueueReporter) -> m.MountResult:
            targets = await mounts_uc.add(ctx, name, mounts, rep, privileged=allowed)
            return m.MountResult(name=name, targets=targets)

        return Op([name], OperationKind.MOUNT, op)

    async def umount(self, call: Call[m.UmountBody]) -> Op:
        name, ctx, targets = self._instance(call), self.ctx, call.body.targets

        async def op(rep: QueueReporter) -> m.MountResult:
            return m.MountResult(name=name, targets=await mounts_uc.remove(ctx, name, targets, rep))

        return Op([name], OperationKind.UMOUNT, op)

    def _instance(self, call: Call[Any]) -> str:
        name = call.params["name"]
        self.ctx.store.get(name)  # "not found" before any stream starts
        return name

    async def start(self, call: Call[m.StartBody]) -> Op:
        name, timeout = self._instance(call), call.body.timeout
        return Op(
            [name],
            OperationKind.START,
            lambda rep: lifecycle.start(self.ctx, name, rep, timeout=timeout),
        )

    async def stop(self, call: Call[m.StopBody]) -> Op:
        name, body, ctx = self._instance(call), call.body, self.ctx

        async def op(rep: QueueReporter) -> m.NameResult:
            if body.cancel:
                return await lifecycle.cancel_delayed_stop(ctx, name)
            if body.force:
                return await lifecycle.force_stop(ctx, name, rep)
            if body.time:
                return await lifecycle.delayed_stop(ctx, name, body.time)
            return await lifecycle.stop(ctx, name, rep)

        kind = OperationKind.FORCE_STOP if body.force else OperationKind.STOP
        return Op([name], kind, op)

    async def suspend(self, call: Call[m.Empty]) -> Op:
        name = self._instance(call)
        return Op([name], OperationKind.SUSPEND, lambda rep: lifecycle.suspend(self.ctx, name, rep))

    async def restart(self, call: Call[m.StartBody]) -> Op:
        name, timeout = self._instance(call), call.body.timeout
        return Op(
            [name],
            OperationKind.RESTART,
            lambda rep: lifecycle.restart(self.ctx, name, rep, timeout=timeout),
        )

    async def delete(self, call: Call[m.DeleteBody]) -> Op:
        name, purge = self._instance(call), call.body.purge
        label = (
            OperationKind.PURGE if purge else OperationKind.DELETE
        )  # a purge pre-empts a readiness wait
        return Op([name], label, lambda rep: delete_uc.delete(self.ctx, name, rep, purge=purge))

    async def recover(self, call: Call[m.Empty]) -> Op:
        name = self._instance(call)
        return Op([name], OperationKind.RECOVER, lambda rep: delete_uc.recover(self.ctx, name, rep))

    async def snapshot_take(self, call: Call[m.SnapshotBody]) -> Op:
        name, body = self._instance(call), call.body
        snapshot = body.name or None
        if snapshot is not None:
            snapshots_uc.validate_name(snapshot)

        async def op(rep: QueueReporter) -> m.SnapshotResult:
            return await snapshots_uc.take(self.ctx, name, snapshot, body.comment, rep)

        return Op([name], OperationKind.SNAPSHOT, op)

    async def snapshot_restore(self, call: Call[m.RestoreBody]) -> Op:
        name, snapshot, body = call.params["name"], call.params["snapshot"], call.body
        self.ctx.store.get_snapshot(name, snapshot)  # "not found" before any stream starts
        if not body.destructive and not body.snapshot_first:
            raise InvalidArgument(
                "restoring discards the instance's current state",
                hint='send "destructive": true, or "snapshot_first": true to keep it',
            )
        first = body.snapshot_first

        async def op(rep: QueueReporter) -> m.RestoreResult:
            return await snapshots_uc.restore(
                self.ctx, name, snapshot, snapshot_first=first, reporter=rep
            )

        return Op([name], OperationKind.RESTORE, op)

    async def snapshot_delete(self, call: Call[m.Empty]) -> Op:
        name, snapshot = call.params["name"], call.params["snapshot"]
        self.ctx.store.get_snapshot(name, snapshot)
        return Op(
            [name],
            OperationKind.DELETE_SNAPSHOT,
            lambda rep: snapshots_uc.delete(self.ctx, name, snapshot, rep),
        )

    async def clone(self, call: Call[m.CloneBody]) -> Op:
        source = self._instance(call)
        new = self.clone_names.reserve(self.ctx, source, call.body.name)

        async def op(rep: QueueReporter) -> m.CloneResult:
            try:
                return await clone_uc.clone(
                    self.ctx, source, new, rep, mounts=call.body.mounts, host=call.body.host
                )
            finally:
                self.clone_names.release(new)

        return Op([source, new], OperationKind.CLONE, op)

    async def purge(self, call: Call[m.Empty]) -> Op:
        deleted = [r.spec.name for r in self.ctx.store.all() if r.deleted]
        return Op(deleted, OperationKind.PURGE, lambda rep: delete_uc.purge(self.ctx, rep))

    async def doctor(self, call: Call[m.DoctorBody]) -> Op:
        wanted, fix = list(call.body.names), call.body.fix
        for name in wanted:
            self.ctx.store.get(name)  # "not found" before the stream starts
        locks = wanted or [r.spec.name for r in self.ctx.store.all()] + ["storage:doctor"]

        async def op(rep: QueueReporter) -> m.DoctorResult:
            return await doctor_uc.run(self.ctx, wanted, fix=fix, reporter=rep)

        return Op(locks, OperationKind.DOCTOR, op)

    async def image_build(self, call: Call[m.BuildBody]) -> Op:
        name, force = call.body.name, call.body.force

        async def op(rep: QueueReporter) -> m.BuildResult:
            info = await images_uc.build(self.images, rep, force=force, name=name)
            return m.BuildResult(id=info.id, release=info.release, disk=info.disk)

        return Op([f"image:{name}"], OperationKind.BUILD, op)

    async def image_prune(self, call: Call[m.PruneBody]) -> m.PruneReply:
        from ketch.service import templates

        removed = images_uc.prune(self.images, self.ctx.store, call.body.days)
        gone = await templates.prune(self.ctx, days=call.body.days)
        return m.PruneReply(removed=removed, templates=[await templates.info_of(t) for t in gone])

    async def image_warm(self, call: Call[m.WarmBody]) -> Op:
        from ketch.service import templates

        body, ctx = call.body, self.ctx

        async def op(rep: QueueReporter) -> m.TemplateInfo:
            return await templates.warm_image(
                ctx, body.image, body.cpus, body.memory, rep, firmware=body.firmware
            )

        return Op([f"template:{body.image}"], OperationKind.WARM, op)

    async def set_setting(self, call: Call[m.SettingBody]) -> m.SetReply:
        key, value = call.params["key"], call.body.value
        target = settings_uc.instance_target(self.ctx, key)
        if target is None:
            hook = self.setting_hooks.get(key)
            if hook is not None:
                await hook(value or None)  # refused (e.g. an address taken): nothing stored
            await settings_uc.set_(self.ctx, key, value)
            return m.SetReply(key=key)
        name, prop = target

        async def op(rep: QueueReporter) -> m.SetReply:
            return await settings_uc.set_instance(self.ctx, name, prop, value, rep)

        # under the instance's lock; the operation table keeps the result as builtins
        event = await self.ops.run([name], OperationKind.SET, typed_result(SET_SETTING, op))
        if event.get("type") == "error":
            err = event["error"]
            raise RemoteError(err["code"], err["message"], err.get("hint"), err["exit_code"])
        return msgspec.convert(event.get("result", {"key": key}), m.SetReply)

    # -- port forwards ----------------------------------------------------------------

    async def forward_list(self, call: Call[None]) -> m.ForwardsReply:
        return await forwards_uc.listing(self.ctx, _names(call.query.names))

    async def _forward(self, call: Call[m.ForwardBody], remove: bool) -> m.ForwardResult:
        name, rule = self._instance(call), call.body.rule
        route = FORWARD_REMOVE if remove else FORWARD_ADD

        async def op(rep: QueueReporter) -> m.ForwardResult:
            change = forwards_uc.remove if remove else forwards_uc.add
            return await change(self.ctx, name, rule)

        # under the instance's lock: a forward changes the spec, as a setting does
        event = await self.ops.run([name], OperationKind.SET, typed_result(route, op))
        if event.get("type") == "error":
            err = event["error"]
            raise RemoteError(err["code"], err["message"], err.get("hint"), err["exit_code"])
        return msgspec.convert(event["result"], m.ForwardResult)

    async def forward_add(self, call: Call[m.ForwardBody]) -> m.ForwardResult:
        return await self._forward(call, remove=False)

    async def forward_remove(self, call: Call[m.ForwardBody]) -> m.ForwardResult:
        return await self._forward(call, remove=True)
