"""The REST/JSON API of ketchd, and its OpenAPI description.

Reads answer with JSON.  Operations that change something answer with a
stream of newline-delimited JSON events (``step``, ``progress``, ``warning``,
``waiting``), ending with one ``result`` or ``error`` event.  Errors carry a
stable code, a message, a hint and the exit code the CLI should use.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from ketch import __version__
from ketch.daemon import operations
from ketch.daemon.ops import Follow, Operations, QueueReporter
from ketch.errors import InvalidArgument, KetchError, NotFound, RemoteError
from ketch.model import State
from ketch.service import clone as clone_uc
from ketch.service import delete as delete_uc
from ketch.service import doctor as doctor_uc
from ketch.service import guest as guest_uc
from ketch.service import guest_stats, guestlink, lifecycle, names
from ketch.service import images as images_uc
from ketch.service import inspect as inspect_uc
from ketch.service import launch as launch_uc
from ketch.service import settings as settings_uc
from ketch.service import snapshots as snapshots_uc
from ketch.service.accel import choose
from ketch.service.images import Images

STREAM_TYPE = "application/x-ndjson"


def error_response(exc: KetchError) -> web.Response:
    status = {"not-found": 404, "usage": 400, "invalid-argument": 400, "already-exists": 409}
    return web.json_response({"error": exc.to_dict()}, status=status.get(exc.code, 409))


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except KetchError as exc:
        return error_response(exc)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError as exc:
        raise InvalidArgument(f"request body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidArgument("request body must be a JSON object")
    return data


class Api:
    """Route handlers bound to the daemon's context."""

    def __init__(self, ops: Operations, images: Images) -> None:
        self.ops = ops
        self.ctx = ops.ctx
        self.images = images
        self.started = time.time()
        self._clone_names: set[str] = set()  # default clone names handed out, not yet made

    def app(self) -> web.Application:
        app = web.Application(middlewares=[errors])
        r = app.router
        r.add_get("/openapi.json", self.openapi)
        r.add_get("/v1/version", self.version)
        r.add_get("/v1/instances", self.list)
        r.add_get("/v1/info", self.info)
        r.add_post("/v1/instances", self.launch)
        # Before /v1/instances/{name}/{action}: aiohttp takes the first route that matches.
        r.add_post("/v1/instances/{name}/snapshots", self.snapshot_take)
        r.add_post("/v1/instances/{name}/snapshots/{snapshot}/{action}", self.snapshot_action)
        r.add_post("/v1/instances/{name}/clone", self.clone)
        r.add_get("/v1/snapshots", self.snapshot_list)
        r.add_post("/v1/instances/{name}/{action}", self.action)
        r.add_post("/v1/purge", self.purge)
        r.add_post("/v1/doctor", self.doctor)
        r.add_get("/v1/instances/{name}/ssh", self.ssh)
        r.add_get("/v1/find", self.find)
        r.add_get("/v1/images", self.image_list)
        r.add_post("/v1/images/build", self.image_build)
        r.add_post("/v1/images/prune", self.image_prune)
        r.add_get("/v1/settings/{key}", self.get_setting)
        r.add_put("/v1/settings/{key}", self.set_setting)
        operations.add_routes(r, self.ops)
        return app

    async def stream(self, request: web.Request, follow: Follow) -> web.StreamResponse:
        return await operations.stream(request, follow)

    # -- reads -------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"ketchd": __version__, "started": self.started})

    async def list(self, request: web.Request) -> web.Response:
        await self.ops.settled()
        views = await inspect_uc.all_views(self.ctx)
        return web.json_response({"list": [inspect_uc.list_entry(v) for v in views]})

    async def info(self, request: web.Request) -> web.Response:
        await self.ops.settled()
        asked = [n for n in request.query.get("names", "").split(",") if n]
        wanted = [n for n in asked if "." not in n]
        snapshots, errors_ = snapshots_uc.info_doc(self.ctx, [n for n in asked if "." in n])
        records = self.ctx.store.all()
        known = {r.spec.name: r for r in records}
        chosen = []
        if not asked:
            chosen = records
        for name in wanted:
            if name in known:
                chosen.append(known[name])
            else:
                errors_.append(f'instance "{name}" does not exist')
        if asked and not chosen and not snapshots:
            raise NotFound(errors_[0])
        accel = (await choose(self.ctx)).accel if chosen else ""
        views = await asyncio.gather(*(inspect_uc.view(self.ctx, r) for r in chosen))
        stats = await asyncio.gather(*(self._stats(v) for v in views))
        counts = self.ctx.store.snapshot_counts()
        info: dict[str, dict[str, Any]] = {}
        for v, (guest, error) in zip(views, stats, strict=True):
            info[v.name] = inspect_uc.info_entry(
                v, accel=accel, guest=guest, snapshot_count=counts.get(v.name, 0)
            )
            if error:
                errors_.append(error)
        for instance, snaps in snapshots.items():  # Multipass's shape: info[NAME]["snapshots"]
            info.setdefault(instance, {})["snapshots"] = snaps
        return web.json_response({"errors": errors_, "info": info})

    async def snapshot_list(self, request: web.Request) -> web.Response:
        await self.ops.settled()
        names_ = [n for n in request.query.get("names", "").split(",") if n]
        doc = snapshots_uc.list_doc(self.ctx, names_)
        if names_ and doc["errors"] and not doc["info"]:
            raise NotFound(doc["errors"][0])
        return web.json_response(doc)

    async def _stats(self, v: inspect_uc.View) -> tuple[dict[str, Any], str | None]:
        if v.state not in (State.RUNNING, State.DELAYED_SHUTDOWN):
            return {}, None
        return await guest_stats.collect_quietly(guestlink.target(self.ctx.root, v.record.spec))

    async def ssh(self, request: web.Request) -> web.Response:
        return web.json_response(await guest_uc.ssh_info(self.ctx, request.match_info["name"]))

    async def find(self, request: web.Request) -> web.Response:
        rows = await self.images.find(request.query.get("query") or None)
        return web.json_response({"images": rows})

    async def image_list(self, request: web.Request) -> web.Response:
        return web.json_response({"images": self.images.list_cached()})

    async def get_setting(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        return web.json_response({"key": key, "value": await settings_uc.get(self.ctx, key)})

    # -- operations -----------------------------------------------------------------

    async def launch(self, request: web.Request) -> web.StreamResponse:
        req = launch_uc.LaunchRequest.from_json(await _body(request))
        name = req.name or names.random_name({r.spec.name for r in self.ctx.store.all()})
        if req.name:
            names.validate(req.name)
        req = launch_uc.LaunchRequest(**{**req.__dict__, "name": name})

        async def op(rep: QueueReporter) -> dict[str, Any]:
            return await launch_uc.launch(self.ctx, req, rep)

        return await self.stream(request, self.ops.submit([name], "launch", op))

    async def action(self, request: web.Request) -> web.StreamResponse:
        name, action = request.match_info["name"], request.match_info["action"]
        body = await _body(request)
        self.ctx.store.get(name)  # "not found" before any stream starts
        ctx = self.ctx

        async def op(rep: QueueReporter) -> dict[str, Any]:
            if action == "start":
                return await lifecycle.start(ctx, name, rep)
            if action == "stop":
                if body.get("cancel"):
                    return await lifecycle.cancel_delayed_stop(ctx, name)
                if body.get("force"):
                    return await lifecycle.force_stop(ctx, name, rep)
                if body.get("time"):
                    return await lifecycle.delayed_stop(ctx, name, float(body["time"]))
                return await lifecycle.stop(ctx, name, rep)
            if action == "suspend":
                return await lifecycle.suspend(ctx, name, rep)
            if action == "restart":
                return await lifecycle.restart(ctx, name, rep)
            if action == "delete":
                return await delete_uc.delete(ctx, name, rep, purge=bool(body.get("purge")))
            if action == "recover":
                return await delete_uc.recover(ctx, name, rep)
            raise NotFound(f"unknown action '{action}'")

        label = "force-stop" if action == "stop" and body.get("force") else action
        label = "purge" if action == "delete" and body.get("purge") else label
        return await self.stream(request, self.ops.submit([name], label, op))

    async def snapshot_take(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = await _body(request)
        self.ctx.store.get(name)
        snapshot = body.get("name") or None
        if snapshot is not None:
            snapshots_uc.validate_name(str(snapshot))
        comment = str(body.get("comment") or "")

        async def op(rep: QueueReporter) -> dict[str, Any]:
            return await snapshots_uc.take(self.ctx, name, snapshot, comment, rep)

        return await self.stream(request, self.ops.submit([name], "snapshot", op))

    async def snapshot_action(self, request: web.Request) -> web.StreamResponse:
        name, action = request.match_info["name"], request.match_info["action"]
        snapshot = request.match_info["snapshot"]
        body = await _body(request)
        self.ctx.store.get_snapshot(name, snapshot)  # "not found" before any stream starts
        ctx = self.ctx
        if action == "restore":
            if not body.get("destructive") and not body.get("snapshot_first"):
                raise InvalidArgument(
                    "restoring discards the instance's current state",
                    hint='send "destructive": true, or "snapshot_first": true to keep it',
                )
            first = bool(body.get("snapshot_first"))

            async def restore(rep: QueueReporter) -> dict[str, Any]:
                return await snapshots_uc.restore(
                    ctx, name, snapshot, snapshot_first=first, reporter=rep
                )

            return await self.stream(request, self.ops.submit([name], "restore", restore))
        if action == "delete":

            async def delete(rep: QueueReporter) -> dict[str, Any]:
                return await snapshots_uc.delete(ctx, name, snapshot, rep)

            return await self.stream(request, self.ops.submit([name], "delete-snapshot", delete))
        raise NotFound(f"unknown snapshot action '{action}'", hint="use restore or delete")

    async def clone(self, request: web.Request) -> web.StreamResponse:
        source = request.match_info["name"]
        body = await _body(request)
        self.ctx.store.get(source)
        if body.get("name"):
            new = names.validate(str(body["name"]))
        else:
            taken = {r.spec.name for r in self.ctx.store.all()} | self._clone_names
            new = clone_uc.default_name(source, taken)
        self._clone_names.add(new)

        async def op(rep: QueueReporter) -> dict[str, Any]:
            try:
                return await clone_uc.clone(self.ctx, source, new, rep)
            finally:
                self._clone_names.discard(new)

        return await self.stream(request, self.ops.submit([source, new], "clone", op))

    async def purge(self, request: web.Request) -> web.StreamResponse:
        names = [r.spec.name for r in self.ctx.store.all() if r.deleted]

        async def op(rep: QueueReporter) -> dict[str, Any]:
            return await delete_uc.purge(self.ctx, rep)

        return await self.stream(request, self.ops.submit(names, "purge", op))

    async def doctor(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        wanted = [str(n) for n in body.get("names", [])]
        for name in wanted:
            self.ctx.store.get(name)  # "not found" before the stream starts
        fix = bool(body.get("fix"))
        locks = wanted or [r.spec.name for r in self.ctx.store.all()] + ["storage:doctor"]

        async def op(rep: QueueReporter) -> dict[str, Any]:
            return await doctor_uc.run(self.ctx, wanted, fix=fix, reporter=rep)

        return await self.stream(request, self.ops.submit(locks, "doctor", op))

    async def image_build(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        force = bool(body.get("force"))
        name = str(body.get("name") or "tiny")
        if name not in images_uc.BUILDABLE:
            raise InvalidArgument(
                f"unknown image '{name}'", hint="ketch can build: " + ", ".join(images_uc.BUILDABLE)
            )

        async def op(rep: QueueReporter) -> dict[str, Any]:
            info = await images_uc.build(self.images, rep, force=force, name=name)
            return {"id": info.id, "release": info.release, "disk": info.disk}

        return await self.stream(request, self.ops.submit([f"image:{name}"], "build", op))

    async def image_prune(self, request: web.Request) -> web.Response:
        body = await _body(request)
        days = float(body.get("days", 14))
        in_use = {r.spec.image_id for r in self.ctx.store.all()}
        in_use |= {r.spec.base_disk for r in self.ctx.store.all()}
        return web.json_response({"removed": self.images.prune(days, in_use)})

    async def set_setting(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        body = await _body(request)
        value = str(body.get("value", ""))
        target = settings_uc.instance_target(self.ctx, key)
        if target is None:
            await settings_uc.set_(self.ctx, key, value)
            return web.json_response({"key": key})
        name, prop = target

        async def op(rep: QueueReporter) -> dict[str, Any]:
            return await settings_uc.set_instance(self.ctx, name, prop, value, rep)

        event = await self.ops.run([name], "set", op)  # under the instance's lock
        if event.get("type") == "error":
            err = event["error"]
            raise RemoteError(err["code"], err["message"], err.get("hint"), err["exit_code"])
        return web.json_response(event.get("result", {"key": key}))


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3 description of the API served at /openapi.json."""
    err = {"$ref": "#/components/schemas/Error"}
    stream = {
        "description": "newline-delimited JSON events ending in a result or error event",
        "content": {STREAM_TYPE: {"schema": {"$ref": "#/components/schemas/Event"}}},
    }

    def op(summary: str, *, streamed: bool = False, body: bool = False) -> dict[str, Any]:
        o: dict[str, Any] = {
            "summary": summary,
            "responses": {
                "200": stream if streamed else {"description": "OK"},
                "default": {
                    "description": "error",
                    "content": {"application/json": {"schema": err}},
                },
            },
        }
        if body:
            o["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
        return o

    return {
        "openapi": "3.0.3",
        "info": {"title": "ketchd", "version": __version__},
        "paths": {
            "/v1/version": {"get": op("daemon version")},
            "/v1/instances": {
                "get": op("list instances ({list: [...]}, as Multipass)"),
                "post": op("launch an instance", streamed=True, body=True),
            },
            "/v1/info": {
                "get": op("instance and INSTANCE.SNAPSHOT details ({errors, info}, as Multipass)")
            },
            "/v1/instances/{name}/{action}": {
                "post": op(
                    "start, stop, suspend, restart, delete, recover", streamed=True, body=True
                )
            },
            "/v1/instances/{name}/snapshots": {
                "post": op(
                    "snapshot a stopped instance ({name?, comment?})", streamed=True, body=True
                )
            },
            "/v1/instances/{name}/snapshots/{snapshot}/{action}": {
                "post": op(
                    "restore ({destructive} or {snapshot_first}) or delete a snapshot",
                    streamed=True,
                    body=True,
                )
            },
            "/v1/instances/{name}/clone": {
                "post": op("clone a stopped instance ({name?})", streamed=True, body=True)
            },
            "/v1/snapshots": {
                "get": op("snapshots per instance ({errors, info}, as Multipass's list)")
            },
            "/v1/instances/{name}/ssh": {"get": op("SSH target with the pinned host key")},
            "/v1/purge": {"post": op("purge deleted instances", streamed=True)},
            "/v1/doctor": {"post": op("find and repair inconsistencies", streamed=True, body=True)},
            "/v1/find": {"get": op("images per remote")},
            "/v1/images": {"get": op("cached images")},
            "/v1/images/build": {"post": op("build tiny or debian-12", streamed=True, body=True)},
            "/v1/images/prune": {"post": op("remove unused cached images", body=True)},
            "/v1/operations": {"get": op("operations in flight and what each waits for")},
            "/v1/operations/{id}": {
                "get": op("re-attach to an operation's events (?replay=false)", streamed=True),
                "delete": op("cancel an operation that waits (a lock, readiness); 409 if not"),
            },
            "/v1/settings/{key}": {
                "get": op("read a setting"),
                "put": op("write a setting", body=True),
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "hint": {"type": "string", "nullable": True},
                                "exit_code": {"type": "integer"},
                            },
                        }
                    },
                },
                "Event": {
                    "type": "object",
                    "properties": {
                        "type": {
                            "type": "string",
                            "enum": [
                                "operation",
                                "step",
                                "progress",
                                "warning",
                                "waiting",
                                "result",
                                "error",
                            ],
                        }
                    },
                },
            }
        },
    }
