"""Bad input and wrong states: clear messages, Multipass's wording, documented exit codes."""

from __future__ import annotations

import pytest
from ketchcli import Ketch, unique


def test_unknown_instance(ketch: Ketch) -> None:
    for verb in ("start", "stop", "suspend", "restart", "delete", "recover"):
        done = ketch.run(verb, "no-such-vm", check=False)
        assert done.returncode == 2, verb
        assert 'instance "no-such-vm" does not exist' in done.stderr
    done = ketch.run("info", "no-such-vm", check=False)
    assert done.returncode == 2
    assert 'instance "no-such-vm" does not exist' in done.stderr


def test_bad_names_and_sizes_are_refused_before_anything_happens(ketch: Ketch) -> None:
    for args, words in (
        (("launch", "--name", "9lives"), "hostname rules"),
        (("launch", "--name", "bad_name"), "hostname rules"),
        (("launch", "--name", "ok", "--memory", "lots"), "lots is not a valid memory size"),
        (("launch", "--name", "ok", "--memory", "16M"), "below the minimum"),
        (("launch", "--name", "ok", "--cpus", "0"), "$.cpus: Expected int >= 1"),
        (("launch", "--name", "ok", "--cloud-init", "/nonexistent.yaml"), "cannot read"),
        (("launch", "--name", "ok", "--firmware", "coreboot"), "invalid choice: 'coreboot'"),
        (("launch", "tiny", "--name", "ok", "--firmware", "uefi"), "boots its kernel directly"),
    ):
        done = ketch.run(*args, check=False)
        assert done.returncode == 1, (args, done.stderr)
        assert words in done.stderr
    assert "ok" not in {i["name"] for i in ketch.json("list")["list"]}


def test_bad_cloud_init_names_line_and_column(ketch: Ketch, tmp_path: object) -> None:
    done = ketch.run(
        "launch", "--name", "ci-bad", "--cloud-init", "-",
        input=b"#cloud-config\nwrite_files:\n  - path: /x\n   content: [\n",
        check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "line" in done.stderr and "column" in done.stderr
    done = ketch.run(
        "launch", "--name", "ci-bad", "--cloud-init", "-", input=b"runcmd: []\n", check=False
    )
    assert done.returncode == 1
    assert "#cloud-config" in done.stderr


def test_unknown_image_is_a_clear_error(ketch: Ketch) -> None:
    done = ketch.run("launch", "no-such-image-alias", "--name", "img-bad", check=False)
    assert done.returncode == 2
    assert "no-such-image-alias" in done.stderr
    assert "img-bad" not in {i["name"] for i in ketch.json("list")["list"]}


def test_bad_usage_exits_1(ketch: Ketch) -> None:
    done = ketch.run("launch", "--bogus", check=False)
    assert done.returncode == 1
    assert "unrecognized arguments: --bogus" in done.stderr
    done = ketch.run("set", "novalue", check=False)
    assert done.returncode == 1
    done = ketch.run("set", "local.accel=warp", check=False)
    assert done.returncode == 1 and "local.accel" in done.stderr


@pytest.mark.vm
def test_taken_and_deleted_names(ketch: Ketch, vm: str) -> None:
    done = ketch.run("launch", "tiny", "--name", vm, check=False)
    assert done.returncode == 2
    assert f'instance "{vm}" already exists' in done.stderr


@pytest.mark.vm
def test_delete_recover_purge(ketch: Ketch) -> None:
    name = unique("del")
    ketch.run("launch", "tiny", "--name", name, "--memory", "512M")
    ketch.run("delete", name)
    assert ketch.state(name) == "Deleted"
    assert ketch.qemu_pid(name) is None
    done = ketch.run("start", name, check=False)
    assert done.returncode == 2
    assert f"Instance '{name}' is deleted." in done.stderr
    done = ketch.run("launch", "tiny", "--name", name, check=False)
    assert "already exists" in done.stderr
    ketch.run("recover", name)
    assert ketch.state(name) == "Stopped"
    ketch.run("delete", name)
    ketch.run("purge")
    assert name not in {i["name"] for i in ketch.json("list")["list"]}


@pytest.mark.vm
def test_graceful_stop_refuses_suspended_with_hint(ketch: Ketch, vm: str) -> None:
    ketch.ensure_running(vm)
    ketch.run("suspend", vm)
    done = ketch.run("stop", vm, check=False)
    assert done.returncode == 2
    assert "--force" in done.stderr
    assert ketch.state(vm) == "Suspended"
    ketch.run("start", vm)


def test_accel_is_probed_and_shown(ketch: Ketch) -> None:
    out = ketch.run("get", "local.accel").stdout
    assert out.split()[0] in ("kvm", "tcg")
    assert "(" in out  # the reason is shown
