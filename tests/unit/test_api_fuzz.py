"""Fuzz ketchd's HTTP API from its generated OpenAPI schemas, against a live daemon.

A real ``ketchd`` (``python -m ketch.daemon.main``) runs on its Unix socket
in a fresh storage root in tmp.  Requests are drawn with hypothesis and
hypothesis-jsonschema from ``docs/openapi.json``'s own component schemas:

* every route with a body gets bodies made invalid on purpose (one field of
  a wrong type, or an unknown field): they must be refused before anything
  runs, so no VM is ever booted and no image built;
* routes on an instance get valid bodies too, for instances that do not
  exist (an empty root): "not found" before any stream;
* reads (all but ``find``, which would go to the internet) get query
  parameters drawn from their schemas, valid or not, and random path values.

Bounded in count (``max_examples``) and by a deadline-free hypothesis run of
a few hundred requests.  Passes when no answer is a 5xx, every refusal is a
ketch error body, ``ketchd.log`` holds no traceback, and the daemon still
answers ``/v1/version`` at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from ketch.api import routes
from ketch.api.openapi import document
from ketch.client import request
from ketch.layout import Root

DOC = document()
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]
EXAMPLES = 60  # per test below: a few hundred requests in all
WAIT = 20.0  # bound on the daemon's start; never a pass criterion

# Values of every JSON type, to put where a schema wants another.
ANY_JSON = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _property(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """One property's values; a list of objects (``mounts``) is put together here too."""
    items = schema.get("items", {})
    if schema.get("type") == "array" and "$ref" in items:
        element = object_of(items["$ref"].rsplit("/", 1)[1])
        return st.lists(element, min_size=schema.get("minItems", 0), max_size=2)
    return from_schema({**schema, "components": {"schemas": SCHEMAS}})


def object_of(name: str) -> st.SearchStrategy[dict[str, Any]]:
    """Valid objects of component ``name``: each property drawn by hypothesis-jsonschema.

    (Its own object strategy relies on hypothesis internals that hypothesis 6.170
    no longer has, so the object is put together here from its properties.)
    """
    schema = SCHEMAS[name]
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    each = {k: _property(v) for k, v in props.items()}
    return st.fixed_dictionaries(
        {k: v for k, v in each.items() if k in required},
        optional={k: v for k, v in each.items() if k not in required},
    )


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def accepts(schema: dict[str, Any], kind: str) -> bool:
    """Whether a property schema admits some value of JSON type ``kind``."""
    options = schema.get("anyOf", [schema])
    for option in options:
        t = option.get("type")
        if "$ref" in option or "enum" in option or t is None:
            if kind == "object" and "$ref" in option:
                return True
            if "enum" in option and kind == "string":
                return True
            continue
        if t == kind or (t == "number" and kind == "integer"):
            return True
    return False


@st.composite
def invalid_body(draw: Any, name: str) -> dict[str, Any]:
    """A body of component ``name`` with one field of a wrong type, or an unknown field."""
    schema = SCHEMAS[name]
    body: dict[str, Any] = draw(object_of(name))
    props: dict[str, Any] = schema.get("properties", {})
    if props and draw(st.booleans()):
        field = draw(st.sampled_from(sorted(props)))
        value = draw(ANY_JSON.filter(lambda v: not accepts(props[field], json_type(v))))
        body[field] = value
    else:
        extra = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in props))
        body[extra] = draw(ANY_JSON)
    return body


def path_of(route: routes.Route[Any, Any], values: dict[str, str]) -> str:
    return route.path.format(**{k: quote(v, safe="") for k, v in values.items()})


SEGMENT = st.text(min_size=1, max_size=30).filter(lambda s: s not in (".", ".."))
BODY_ROUTES = [r for r in routes.ROUTES if r.body is not None]
INSTANCE_ROUTES = [r for r in BODY_ROUTES if "{name}" in r.path]
READS = [  # (the events stream never ends: tests/unit/test_events.py)
    r for r in routes.ROUTES if r.method == "GET" and r not in (routes.FIND, routes.WATCH)
]


class Live:
    """A real ketchd on a fresh storage root, and what it answered."""

    def __init__(self, root: Root) -> None:
        self.root = root
        self.statuses: list[int] = []

    def send(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        resp = request(str(self.root.socket), method, path, body, 30.0)
        data = resp.read()
        self.statuses.append(resp.status)
        assert resp.status < 500, (method, path, body, data)
        if resp.status >= 400:
            err = json.loads(data)["error"]
            assert set(err) == {"code", "message", "hint", "exit_code"}, data
        return resp.status, data


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    short = Path(tempfile.mkdtemp(prefix="kz-", dir="/tmp"))
    root = Root(short)
    env = dict(os.environ, KETCH_STORAGE=str(short))
    log = root.daemon_log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ketch.daemon.main"], stdout=log, stderr=log, env=env
    )
    log.close()
    try:
        deadline = time.monotonic() + WAIT
        while not root.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        daemon = Live(root)
        yield daemon
        status, data = daemon.send("GET", "/v1/version", None)  # still serving
        assert status == 200 and json.loads(data)["ketchd"]
        text = root.daemon_log.read_text(errors="replace")
        assert "Traceback" not in text, text[-4000:]
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(WAIT)
        shutil.rmtree(short, ignore_errors=True)


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(data=st.data())
def test_invalid_bodies_are_refused_with_a_4xx(live: Live, data: st.DataObject) -> None:
    route = data.draw(st.sampled_from(BODY_ROUTES))
    assert route.body is not None
    params = {
        p: data.draw(SEGMENT) for p in ("name", "snapshot", "key") if f"{{{p}}}" in route.path
    }
    body = data.draw(invalid_body(route.body.__name__))
    status, _ = live.send(route.method, path_of(route, params), json.dumps(body).encode())
    assert 400 <= status < 500


@FUZZ
@given(data=st.data())
def test_valid_bodies_for_instances_that_do_not_exist(live: Live, data: st.DataObject) -> None:
    route = data.draw(st.sampled_from(INSTANCE_ROUTES))
    assert route.body is not None
    params = {p: data.draw(SEGMENT) for p in ("name", "snapshot") if f"{{{p}}}" in route.path}
    body = data.draw(object_of(route.body.__name__))
    status, _ = live.send(route.method, path_of(route, params), json.dumps(body).encode())
    assert status in (400, 404)


@FUZZ
@given(data=st.data())
def test_reads_with_query_parameters_from_their_schemas(live: Live, data: st.DataObject) -> None:
    route = data.draw(st.sampled_from(READS))
    params = {p: data.draw(SEGMENT) for p in ("name", "key", "id") if f"{{{p}}}" in route.path}
    query = data.draw(
        st.one_of(
            object_of(route.query.__name__),
            st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=2),
        )
    )
    path = path_of(route, params)
    if query:
        path += "?" + urlencode({k: str(v) for k, v in query.items()})
    status, _ = live.send("GET", path, None)
    assert status < 500


def test_garbage_bodies_and_paths(live: Live) -> None:
    for body in (b"{", b"\xff\xfe", b"[]", b"null", b'"x"', b"1e999999", b'{"a":' * 1000):
        status, _ = live.send("POST", "/v1/instances", body)
        assert status == 400
    for path in ("/v1/instances/%2e%2e/start", "/v1/" + "x" * 4000, "/v1/instances/a/b/c/d"):
        status, _ = live.send("POST", path, b"{}")
        assert 400 <= status < 500
