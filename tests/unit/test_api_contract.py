"""The typed wire contract, against the real daemon app on a Unix socket (fake driver only).

Each bad input of issue 13 gets a 4xx naming the field, and changes nothing:
no instance made, purged, started or stopped, no driver call.  Oversize
bodies are a 413 ketch error; a legitimate 1.7 MB cloud-init gets through.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_daemon_api import Env, raw, serving

from ketch.api import models as m
from ketch.errors import RemoteError
from ketch.model import Intent


@pytest.fixture
def env(tmp_path: Path) -> Any:
    with serving(tmp_path) as running:
        yield running


def refused(env: Env, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    status, ctype, answer = raw(env, method, path, body)
    assert "json" in ctype, answer
    doc: dict[str, Any] = json.loads(answer)
    err = doc["error"]
    assert set(err) == {"code", "message", "hint", "exit_code"}
    return status, err


BAD = [
    ("POST", "/v1/instances", {"name": 123}, "$.name: Expected str | null, got int"),
    ("POST", "/v1/instances", {"timeout": "soon"}, "$.timeout: Expected float | null, got str"),
    ("POST", "/v1/instances", {"timeout": 1e9}, "$.timeout: Expected float <= 3600.0"),
    ("POST", "/v1/instances", {"timeout": 0}, "$.timeout: Expected float > 0"),
    ("POST", "/v1/instances", {"cloud_init": ["a"]}, "$.cloud_init: Expected str | null"),
    ("POST", "/v1/instances", {"image": {"a": 1}}, "$.image: Expected str, got object"),
    ("POST", "/v1/instances", {"cpus": "2"}, "$.cpus: Expected int, got str"),
    ("POST", "/v1/instances", {"cpus": 65}, "$.cpus: Expected int <= 64"),
    ("POST", "/v1/instances", {"firmware": "coreboot"}, "$.firmware: Invalid enum value"),
    ("POST", "/v1/instances/alpha/delete", {"purge": "false"}, "$.purge: Expected bool"),
    ("POST", "/v1/instances/alpha/stop", {"force": 1}, "$.force: Expected bool, got int"),
    ("POST", "/v1/instances/alpha/stop", {"time": "soon"}, "$.time: Expected float | null"),
    ("POST", "/v1/instances/alpha/start", {"x": 1}, "unknown field x"),
    ("POST", "/v1/images/prune", {"days": "abc"}, "$.days: Expected float, got str"),
    ("POST", "/v1/images/prune", {"days": -1}, "$.days: Expected float >= 0"),
    ("POST", "/v1/doctor", {"names": "alpha"}, "$.names: Expected array, got str"),
    ("POST", "/v1/images/build", {"name": "windows"}, "$.name: Invalid enum value"),
    ("PUT", "/v1/settings/client.primary-name", {"value": 5}, "$.value: Expected str"),
    ("PUT", "/v1/settings/client.primary-name", {}, "missing required field value"),
    ("POST", "/v1/hosts", {"name": "lv"}, "missing required field uri"),
    (
        "POST",
        "/v1/hosts",
        {"name": "", "uri": "qemu:///system"},
        "$.name: Expected str of length >= 1",
    ),
    (
        "POST",
        "/v1/hosts",
        {"name": "lv", "uri": "qemu:///system", "timeout": 61},
        "$.timeout: Expected float <= 60.0",
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "says"), BAD)
def test_bad_input_is_400_naming_the_field_and_changes_nothing(
    env: Env, method: str, path: str, body: dict[str, Any], says: str
) -> None:
    env.add("alpha", Intent.STOP, running=False)
    env.store.set_setting("client.primary-name", "primary")
    status, err = refused(env, method, path, json.dumps(body).encode())
    assert status == 400
    assert err["code"] == "invalid-argument" and err["exit_code"] == 1
    assert says in err["message"], err["message"]
    assert err["message"].startswith("invalid request body: ")
    # nothing happened: one instance, stopped, not deleted; no driver call; setting kept
    assert [r.spec.name for r in env.store.all()] == ["alpha"]
    assert not env.store.get("alpha").deleted and env.store.get("alpha").intent is Intent.STOP
    assert env.driver.calls == []
    assert env.store.history("alpha") == []
    assert env.store.get_setting("client.primary-name") == "primary"


def test_the_client_turns_a_refusal_into_exit_1_with_the_field(env: Env) -> None:
    with pytest.raises(RemoteError) as err:
        env.client.stream("/v1/instances", {"cpus": "two"})
    assert err.value.exit_code == 1
    assert err.value.message == "invalid request body: $.cpus: Expected int, got str"


def test_purge_false_as_a_boolean_does_not_purge(env: Env) -> None:
    env.add("alpha", Intent.STOP, running=False)
    env.client.stream("/v1/instances/alpha/delete", {"purge": False})
    assert env.store.get("alpha").deleted  # deleted, recoverable, not purged


def test_bad_query_parameters_are_400(env: Env) -> None:
    status, err = refused(env, "GET", "/v1/info?colour=blue", b"")
    assert status == 400 and "unknown field colour" in err["message"]
    assert err["message"].startswith("invalid query parameter")


def test_unknown_routes_and_methods_are_ketch_errors(env: Env) -> None:
    status, err = refused(env, "GET", "/v1/nothing-here", b"")
    assert status == 404 and err["code"] == "not-found" and "/v1/nothing-here" in err["message"]
    status, err = refused(env, "DELETE", "/v1/instances", b"")
    assert status == 405 and err["code"] == "usage"


def test_oversize_body_is_413_naming_the_limit(env: Env) -> None:
    big = json.dumps({"name": "big", "cloud_init": "#cloud-config\n" + "x" * m.MAX_BODY})
    status, err = refused(env, "POST", "/v1/instances", big.encode())
    assert status == 413
    assert err["code"] == "too-large" and err["exit_code"] == 1
    assert "8 MiB" in err["message"]
    assert env.store.all() == []
    with pytest.raises(RemoteError) as remote:
        env.client.stream("/v1/instances", json.loads(big))
    assert remote.value.exit_code == 1 and "8 MiB" in remote.value.message


def test_a_legitimate_large_cloud_init_gets_past_the_body_limit(env: Env) -> None:
    user_data = "#cloud-config\nwrite_files:\n" + "".join(
        f"  - path: /etc/ketch/f{i}\n    content: {'y' * 1000}\n" for i in range(1700)
    )
    assert len(user_data) > 1_700_000
    with pytest.raises(RemoteError) as err:
        env.client.stream("/v1/instances", {"name": "big", "cloud_init": user_data})
    # past the body limit and the model: it failed where the (fake) image provider says so
    assert err.value.code != "too-large" and "no image" in err.value.message


def test_checked_in_openapi_is_the_generated_one() -> None:
    from ketch.api.openapi import text

    checked_in = Path(__file__).parents[2] / "docs" / "openapi.json"
    assert checked_in.read_text() == text(), (
        "docs/openapi.json is stale: .venv/bin/python -m ketch.api.openapi > docs/openapi.json"
    )


def test_openapi_describes_every_body_reply_and_event() -> None:
    from ketch.api.openapi import document
    from ketch.api.routes import ROUTES

    doc = document()
    schemas = doc["components"]["schemas"]
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert route.reply.__name__ in schemas
        if route.body is not None:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/" + route.body.__name__)
    kinds = set(schemas["Event"]["discriminator"]["mapping"])
    assert kinds == {"operation", "step", "progress", "warning", "waiting", "result", "error"}
    launch = schemas["LaunchBody"]["properties"]
    assert launch["cpus"]["maximum"] == 64
    assert schemas["LaunchBody"]["additionalProperties"] is False


def test_the_cli_path_imports_msgspec_without_typing_extensions() -> None:
    """ketch.api.models imports msgspec with typing_extensions hidden (8 ms off 'ketch list')."""
    import subprocess
    import sys

    code = (
        "import sys, ketch.cli.main, ketch.client\n"
        "assert 'msgspec' not in sys.modules  # the CLI sends its request first\n"
        "from ketch.api import models as m\n"
        "assert 'msgspec' in sys.modules and 'typing_extensions' not in sys.modules\n"
        'doc = b\'{"list": [{"name": "a", "state": "Running", "ipv4": [],\'\n'
        'doc += b\' "release": "", "ssh_port": 1, "inconsistencies": 0}]}\'\n'
        "import msgspec\n"
        "assert msgspec.json.decode(doc, type=m.ListReply).list[0].name == 'a'\n"
        "import typing_extensions\n"  # and it can still be imported afterwards
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


def test_an_empty_body_is_decoded_as_its_models_defaults() -> None:
    """The client sends ``{}`` for a body not given (no model, no msgspec loaded first)."""
    import msgspec

    from ketch.api.routes import ROUTES, SUSPEND
    from ketch.client import _payload

    assert _payload(SUSPEND, None) == b"{}"
    for route in ROUTES:
        model = route.body
        assert route.has_body == (model is not None)
        if model is None:
            assert _payload(route, None) is None
            continue
        try:
            defaults = model()
        except TypeError:  # required fields: the CLI always gives this body
            continue
        assert msgspec.json.decode(b"{}", type=model) == defaults, route.name


@pytest.mark.parametrize("verb", ["suspend", "start", "stop"])
def test_the_lifecycle_verbs_send_their_request_before_msgspec_or_typing(verb: str) -> None:
    """Their fixed cost counts against a QMP save of a fifth of a second (bench/suspend.py):
    the models (and msgspec, typing) are imported while ketchd works, not before asking."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import ketch.client\n"
        "from ketch.cli.main import main\n"
        "from ketch.errors import DaemonUnreachable\n"
        "heavy = ('msgspec', 'typing', 'ketch.api.models')\n"
        "def spy(*args, **kwargs):\n"
        "    print([m for m in heavy if m in sys.modules])\n"
        "    raise DaemonUnreachable('the spy stands in for ketchd')\n"
        "ketch.client.request = spy\n"
        f"main([{verb!r}, 'vm1'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout == "[]\n", done.stderr
    assert "the spy stands in for ketchd" in done.stderr


def test_models_re_exports_every_model_of_its_parts() -> None:
    """A model added to a part (common, instances, ...) is reachable as ``m.X``, the same object."""
    import importlib

    parts = ["common", "instances", "snapshots", "system", "events", "hosts"]
    for part in parts:
        module = importlib.import_module(f"ketch.api.{part}")
        public = [n for n, v in vars(module).items() if not n.startswith("_")]
        mine = [
            n for n in public if getattr(vars(module)[n], "__module__", None) == module.__name__
        ]
        assert mine, part
        for name in mine:
            assert name in m.__all__ and getattr(m, name) is getattr(module, name), (part, name)
    assert len(m.__all__) == len(set(m.__all__))


def test_a_route_can_stream_events_it_already_has(tmp_path: Path) -> None:
    """wire.Events: a bodiless GET streamed route (as re-attaching to an operation will be)."""
    import asyncio
    import shutil
    import tempfile

    from aiohttp import web

    from ketch.api.routes import Route
    from ketch.client import Client
    from ketch.daemon.ops import Operations
    from ketch.daemon.wire import Call, Events, bind, errors
    from ketch.layout import Root

    attach: Route[m.Empty, m.NameResult] = Route(
        "attach", "GET", "/v1/test/{id}", "re-attach", "m.NameResult", streamed=True
    )

    async def handler(call: Call[None]) -> Events:
        async def events() -> Any:
            yield m.OperationEvent(id=call.params["id"])
            yield {"type": "step", "message": "still going"}
            yield {"type": "result", "result": {"name": "web"}}

        return Events(events())

    short = Path(tempfile.mkdtemp(prefix="ke-", dir="/tmp"))
    root = Root(short)
    seen: list[m.AnyEvent] = []

    async def main() -> m.NameResult:
        app = web.Application(middlewares=[errors])
        app.router.add_route("GET", attach.path, bind(attach, handler, cast_ops()))
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, str(root.socket)).start()
        try:
            client = Client(root, autostart=False)
            return await asyncio.to_thread(client.run, attach, None, seen.append, id="op-1")
        finally:
            await runner.cleanup()

    def cast_ops() -> Operations:
        return None  # type: ignore[return-value]  # Events never submits an operation

    try:
        result = asyncio.run(main())
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert result == m.NameResult(name="web")
    assert seen == [m.OperationEvent(id="op-1"), m.StepEvent(message="still going")]


def test_launch_body_defaults_are_the_services() -> None:
    import msgspec

    from ketch.service.launch import LaunchRequest

    body = msgspec.structs.asdict(m.LaunchBody())
    assert body.pop("mounts") == []  # launch --mount: the daemon mounts once launched
    assert body == {k: getattr(LaunchRequest(), k) for k in body}


def test_every_route_names_the_models_its_annotation_says() -> None:
    """Routes name their models as strings (imported lazily): hold them to the annotations."""
    import ast
    import inspect

    from ketch.api import routes

    tree = ast.parse(inspect.getsource(routes))
    checked = 0
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            ann = ast.unparse(node.annotation)
            if not ann.startswith("Route["):
                continue
            route = getattr(routes, node.target.id)
            body, reply = (x.strip() for x in ann[len("Route[") : -1].split(","))
            assert route._reply == reply, node.target.id
            assert (route._body or "m.Empty") == body, node.target.id
            assert isinstance(route.reply, type) and issubclass(route.reply, m.Reply)
            assert route.body is None or issubclass(route.body, m.Body)
            checked += 1
    assert checked == len(routes.ROUTES)
