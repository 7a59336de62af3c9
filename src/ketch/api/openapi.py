"""The OpenAPI 3.1 document of ketchd's API, generated from the route table and the models.

ketchd serves it at ``/openapi.json``; it is checked in as ``docs/openapi.json``
(a test fails when that file is stale).  Regenerate it with::

    .venv/bin/python -m ketch.api.openapi > docs/openapi.json
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import msgspec

from ketch import __version__
from ketch.api import models as m
from ketch.api.routes import ROUTES, STREAM_TYPE, Route

REF = "#/components/schemas/{name}"
EVENT = "Event"
STREAMS = {"watch": "WatchStreamEvent"}  # routes whose stream is not an operation's


def _parameters(route: Route[Any, Any], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
        for p in re.findall(r"{(\w+)}", route.path)
    ]
    query = schemas[route.query.__name__]
    for name, schema in query.get("properties", {}).items():
        params.append({"name": name, "in": "query", "required": False, "schema": schema})
    return params


def _operation(route: Route[Any, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    error = {
        "description": "refused or failed: a ketch error",
        "content": {"application/json": {"schema": {"$ref": REF.format(name="ErrorReply")}}},
    }
    result = {"$ref": REF.format(name=route.reply.__name__)}
    if route.streamed:
        ok: dict[str, Any] = {
            "description": "newline-delimited JSON events ending in a result or an error "
            f"event; the result event's result is a {route.reply.__name__}",
            "content": {
                STREAM_TYPE: {"schema": {"$ref": REF.format(name=STREAMS.get(route.name, EVENT))}}
            },
            "x-ketch-result": result,
        }
    else:
        ok = {"description": "OK", "content": {"application/json": {"schema": result}}}
    op: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "responses": {"200": ok, "default": error},
    }
    params = _parameters(route, schemas)
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {
            "required": False,
            "content": {
                "application/json": {"schema": {"$ref": REF.format(name=route.body.__name__)}}
            },
        }
    return op


TUNNEL = "/v1/instances/{name}/ssh-tunnel"


def _tunnel() -> dict[str, Any]:
    """The SSH tunnel of a remote client: a WebSocket upgrade, binary messages both ways."""
    return {
        "summary": "upgrade to a WebSocket relaying one SSH connection to the guest's SSH port "
        "(binary messages both ways; a remote client's exec, shell and transfer)",
        "parameters": [
            {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "responses": {
            "101": {"description": "switched to the WebSocket protocol"},
            "200": {"description": "never: the answer is 101, or an error"},
            "default": {
                "description": "refused before the upgrade",
                "content": {
                    "application/json": {"schema": {"$ref": REF.format(name="ErrorReply")}}
                },
            },
        },
    }


def document() -> dict[str, Any]:
    """The whole document (deterministic: the same models give the same bytes)."""
    types: list[Any] = [m.ErrorReply, m.AnyEvent, m.AnyWatchEvent]
    for route in ROUTES:
        types += [route.reply, route.query] + ([route.body] if route.body is not None else [])
    (_, event, watch, *_), schemas = msgspec.json.schema_components(types, ref_template=REF)
    schemas[EVENT], schemas[STREAMS["watch"]] = event, watch
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schemas)
    paths[TUNNEL] = {"get": _tunnel()}  # no model: a WebSocket (daemon/tunnel.py)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ketchd",
            "version": __version__,
            "description": "ketch's daemon, on a Unix socket in the storage root. "
            f"Request bodies are at most {m.MAX_BODY} bytes (else 413).",
        },
        "paths": paths,
        "components": {"schemas": dict(sorted(schemas.items()))},
    }


def text() -> str:
    """The document as checked in: indented JSON with a final newline."""
    return json.dumps(document(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(text())
