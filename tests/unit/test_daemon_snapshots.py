"""ketchd's routes for snapshots, clones and instance settings, served for real.

The daemon of ``test_daemon_api`` (real aiohttp app, real operations table,
real store, fake hypervisor) with real qcow2 disks in the instance
directories, so ``qemu-img`` does the snapshot and clone work for real.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_daemon_api import WAIT, Env, raw, serving, wait

from ketch.errors import RemoteError
from ketch.host import qemu_img
from ketch.model import Intent

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Env]:
    with serving(tmp_path) as running:
        yield running


def add(api: Env, name: str, *, running: bool = False, port: int = 42001) -> Path:
    """An instance with a real (small, standalone) qcow2 disk."""
    api.add(name, Intent.RUN if running else Intent.STOP, running=running, port=port)
    disk = api.root.instance(name).disk
    disk.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    return disk


def qemu_img_info(disk: Path) -> str:
    argv = ["qemu-img", "info", "--output=json", str(disk)]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def error_of(api: Env, path: str, body: dict[str, object]) -> RemoteError:
    with pytest.raises(RemoteError) as err:
        api.client.stream(path, body)
    return err.value


def test_snapshot_list_and_info_shapes(api: Env) -> None:
    disk = add(api, "vm")
    add(api, "other", port=42002)
    assert api.client.stream("/v1/instances/vm/snapshots", {"comment": "first"}) == {
        "name": "vm",
        "snapshot": "snapshot1",
    }
    api.client.stream("/v1/instances/vm/snapshots", {"name": "second"})
    assert len(qemu_img.read_snapshot_names(disk)) == 2
    assert api.client.get("/v1/snapshots") == {
        "errors": [],
        "info": {
            "vm": {
                "snapshot1": {"parent": "", "comment": "first"},
                "second": {"parent": "snapshot1", "comment": ""},
            }
        },
    }
    doc = api.client.get("/v1/info", names="vm.snapshot1,vm,ghost.x,vm.nope")
    assert doc["errors"] == ['instance "ghost" does not exist', 'snapshot "vm.nope" does not exist']
    assert doc["info"]["vm"]["snapshot_count"] == "2"
    assert doc["info"]["vm"]["state"] == "Stopped"
    snap = doc["info"]["vm"]["snapshots"]["snapshot1"]
    assert snap["children"] == ["second"] and snap["parent"] == "" and snap["comment"] == "first"
    assert (snap["cpu_count"], snap["memory_size"], snap["disk_space"]) == (
        "1", str(512 * 1024**2), str(1024**3),
    )  # fmt: skip
    only = api.client.get("/v1/info", names="vm.second")
    assert list(only["info"]) == ["vm"] and "state" not in only["info"]["vm"]  # not the instance
    with pytest.raises(RemoteError) as err:
        api.client.get("/v1/info", names="vm.nope")
    assert err.value.code == "not-found"
    assert api.client.get("/v1/info", names="other")["info"]["other"]["snapshot_count"] == "0"


def test_snapshot_of_a_running_instance_is_refused_with_a_hint(api: Env) -> None:
    add(api, "vm", running=True)
    err = error_of(api, "/v1/instances/vm/snapshots", {})
    assert (err.code, err.exit_code) == ("invalid-state", 2)
    assert err.message == 'cannot snapshot "vm": it is Running'
    assert err.hint == "stop it first: 'ketch stop vm'"


def test_bad_snapshot_names_and_unknowns_are_refused_before_any_stream(api: Env) -> None:
    add(api, "vm")
    status, ctype, body = raw(api, "POST", "/v1/instances/vm/snapshots", b'{"name": "a.b"}')
    assert status == 400 and "json" in ctype
    assert json.loads(body)["error"]["code"] == "invalid-argument"
    status, _, body = raw(api, "POST", "/v1/instances/vm/snapshots/ghost/restore", b"{}")
    assert status == 404
    assert json.loads(body)["error"]["message"] == 'snapshot "vm.ghost" does not exist'
    status, _, _ = raw(api, "POST", "/v1/instances/ghost/snapshots", b"{}")
    assert status == 404


def test_restore_needs_an_explicit_choice(api: Env) -> None:
    add(api, "vm")
    api.client.stream("/v1/instances/vm/snapshots", {})
    status, _, body = raw(api, "POST", "/v1/instances/vm/snapshots/snapshot1/restore", b"{}")
    assert status == 400
    err = json.loads(body)["error"]
    assert "discards" in err["message"] and "snapshot_first" in err["hint"]
    got = api.client.stream(
        "/v1/instances/vm/snapshots/snapshot1/restore", {"snapshot_first": True}
    )
    assert got == {"name": "vm", "snapshot": "snapshot1", "saved": "snapshot2"}
    got = api.client.stream("/v1/instances/vm/snapshots/snapshot2/restore", {"destructive": True})
    assert got["saved"] is None
    assert api.store.snapshot_head("vm") == "snapshot2"
    err2 = error_of(api, "/v1/instances/vm/snapshots/snapshot1/frobnicate", {})
    assert err2.code == "not-found" and "frobnicate" in err2.message


def test_deleting_a_snapshot_of_a_running_instance_goes_through_the_driver(api: Env) -> None:
    add(api, "vm")
    api.client.stream("/v1/instances/vm/snapshots", {})
    (meta,) = api.store.snapshots("vm")
    api.driver.vms["vm"].running = True  # started since
    assert api.client.stream("/v1/instances/vm/snapshots/snapshot1/delete", {}) == {
        "name": "vm",
        "snapshot": "snapshot1",
    }
    assert [c.what for c in api.driver.calls] == [f"delete_tag:{meta.tag}"]
    assert api.store.snapshots("vm") == []
    assert api.store.history("vm")[0].op == "delete-snapshot"


def test_clones_get_default_names_in_turn(api: Env) -> None:
    add(api, "vm")
    assert api.client.stream("/v1/instances/vm/clone", {}) == {
        "name": "vm-clone1",
        "source": "vm",
    }
    assert api.client.stream("/v1/instances/vm/clone", {})["name"] == "vm-clone2"
    assert api.client.stream("/v1/instances/vm/clone", {"name": "mine"})["name"] == "mine"
    assert {r.spec.name for r in api.store.all()} == {"vm", "vm-clone1", "vm-clone2", "mine"}
    err = error_of(api, "/v1/instances/vm/clone", {"name": "mine"})
    assert err.code == "already-exists"
    status, _, _ = raw(api, "POST", "/v1/instances/vm/clone", b'{"name": "bad.name"}')
    assert status == 400


def test_instance_settings_through_the_api(api: Env) -> None:
    disk = add(api, "vm")
    api.client.put("/v1/settings/local.vm.cpus", {"value": "2"})
    api.client.put("/v1/settings/local.vm.disk", {"value": "2G"})
    assert api.client.get("/v1/settings/local.vm.cpus")["value"] == "2"
    assert api.client.get("/v1/settings/local.vm.disk")["value"] == "2.0GiB"
    assert api.client.get("/v1/settings/local.vm.memory")["value"] == "512.0MiB"
    assert api.store.get("vm").spec.cpus == 2
    assert qemu_img.parse_info(qemu_img_info(disk)).virtual_size == 2 * 1024**3
    with pytest.raises(RemoteError) as err:
        api.client.put("/v1/settings/local.vm.memory", {"value": "256M"})
    assert (err.value.code, err.value.exit_code) == ("invalid-argument", 1)
    with pytest.raises(RemoteError) as err:
        api.client.put("/v1/settings/local.ghost.cpus", {"value": "2"})
    assert err.value.code == "not-found"
    api.driver.vms["vm"].running = True
    with pytest.raises(RemoteError) as err:
        api.client.put("/v1/settings/local.vm.cpus", {"value": "3"})
    assert err.value.code == "invalid-state" and err.value.hint
    assert api.store.get("vm").spec.cpus == 2


def test_a_setting_waits_for_an_operation_on_its_instance(api: Env) -> None:
    add(api, "vm", running=True)
    gate = api.driver.hold("vm", "powerdown")
    stopping = api.in_background(lambda: api.client.stream("/v1/instances/vm/stop", {}))
    wait(api.driver.started("vm", "powerdown"), "powerdown started")
    setting = api.in_background(
        lambda: api.client.put("/v1/settings/local.vm.cpus", {"value": "2"})
    )
    assert not setting.done()  # held behind the stop, which holds the instance's lock
    gate.set()
    stopping.result(WAIT)
    assert setting.result(WAIT)["changed"] is True  # and then the instance was Stopped
    assert api.store.get("vm").spec.cpus == 2
