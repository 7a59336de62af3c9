"""``ketch get`` / ``ketch set`` on real VMs: cpus, memory and disk as the guest sees them.

The guest is asked itself: ``nproc``, ``MemTotal`` in ``/proc/meminfo``, the
size of ``/dev/vda`` in ``/sys/block/vda/size`` (512-byte sectors) and the
root filesystem's size in ``df`` (the tiny image grows it at boot).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ketchcli import Ketch

pytestmark = pytest.mark.vm

GiB = 1024**3
MiB = 1024**2


@pytest.fixture(scope="module")
def setvm(ketch: Ketch) -> Iterator[str]:
    with ketch.launched("set", "--memory", "512M", "--disk", "2G") as name:
        yield name


def stopped(ketch: Ketch, name: str) -> None:
    if ketch.state(name) != "Stopped":
        ketch.run("stop", "--force", name)
    assert ketch.state(name) == "Stopped"


def get(ketch: Ketch, name: str) -> dict[str, str]:
    return {
        prop: ketch.run("get", f"local.{name}.{prop}").stdout.strip()
        for prop in ("cpus", "memory", "disk")
    }


def guest(ketch: Ketch, name: str) -> dict[str, int]:
    out = ketch.exec(
        name,
        "sh",
        "-c",
        "nproc; sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo; "
        "cat /sys/block/vda/size; df -k / | tail -n 1 | awk '{print $2}'",
    ).split()
    return {
        "cpus": int(out[0]),
        "mem_kib": int(out[1]),
        "disk_bytes": int(out[2]) * 512,
        "rootfs_kib": int(out[3]),
    }


def test_cpus_memory_and_disk_changes_show_inside_the_guest(ketch: Ketch, setvm: str) -> None:
    ketch.ensure_running(setvm)
    before = guest(ketch, setvm)
    assert before["cpus"] == 1 and before["disk_bytes"] == 2 * GiB
    assert get(ketch, setvm) == {"cpus": "1", "memory": "512.0MiB", "disk": "2.0GiB"}

    ketch.run("stop", setvm)
    ketch.run("set", f"local.{setvm}.cpus=2")
    ketch.run("set", f"local.{setvm}.memory=768M")
    ketch.run("set", f"local.{setvm}.disk=3G")
    assert get(ketch, setvm) == {"cpus": "2", "memory": "768.0MiB", "disk": "3.0GiB"}
    assert ketch.info(setvm)["cpu_count"] == "2"

    ketch.run("start", setvm)
    after = guest(ketch, setvm)
    assert after["cpus"] == 2
    assert before["mem_kib"] < after["mem_kib"] <= 768 * 1024
    assert after["mem_kib"] - before["mem_kib"] > 200 * 1024  # about the 256 MiB added
    assert after["disk_bytes"] == 3 * GiB
    assert after["rootfs_kib"] > before["rootfs_kib"] + 900 * 1024  # grown to the new disk


def test_running_instances_refuse_changes_with_a_hint(ketch: Ketch, setvm: str) -> None:
    ketch.ensure_running(setvm)
    values = get(ketch, setvm)
    for kv in ("cpus=3", "memory=1G", "disk=10G"):
        done = ketch.run("set", f"local.{setvm}.{kv}", check=False)
        assert done.returncode == 2, done.stderr
        assert "it is Running" in done.stderr
        assert f"hint: stop it first: 'ketch stop {setvm}'" in done.stderr
    assert get(ketch, setvm) == values


@pytest.mark.parametrize(
    ("kv", "words"),
    [
        ("cpus=0", "invalid number of CPUs '0'"),
        ("cpus=many", "invalid number of CPUs 'many'"),
        ("memory=256M", "below the minimum of 512M"),
        ("memory=lots", "lots is not a valid memory size - need"),
        ("disk=1G", "can only grow"),
        ("disk=huge", "huge is not a valid memory size - need"),
    ],
)
def test_invalid_values_are_refused_and_change_nothing(
    ketch: Ketch, setvm: str, kv: str, words: str
) -> None:
    stopped(ketch, setvm)
    values = get(ketch, setvm)
    size = (ketch.root / "instances" / setvm / "disk.qcow2").stat().st_size
    done = ketch.run("set", f"local.{setvm}.{kv}", check=False)
    assert done.returncode == 1, done.stderr
    assert words in done.stderr and "hint: " in done.stderr
    assert get(ketch, setvm) == values
    assert (ketch.root / "instances" / setvm / "disk.qcow2").stat().st_size == size


def test_unknown_instances_and_keys(ketch: Ketch) -> None:
    for argv in (["get", "local.ghost.cpus"], ["set", "local.ghost.cpus=2"]):
        done = ketch.run(*argv, check=False)
        assert done.returncode == 2 and 'instance "ghost" does not exist' in done.stderr
    done = ketch.run("get", "local.ghost.colour", check=False)
    assert done.returncode == 2 and "unknown setting" in done.stderr


def test_a_suspended_instance_refuses_a_memory_change(ketch: Ketch, setvm: str) -> None:
    ketch.ensure_running(setvm)
    boot = ketch.boot_id(setvm)
    memory = get(ketch, setvm)["memory"]
    ketch.run("suspend", setvm)
    done = ketch.run("set", f"local.{setvm}.memory=2G", check=False)
    assert done.returncode == 2
    assert "it is Suspended" in done.stderr and "Size mismatch" in done.stderr
    assert f"ketch stop --force {setvm}" in done.stderr
    assert get(ketch, setvm)["memory"] == memory
    ketch.run("start", setvm)  # the saved state still loads
    assert ketch.boot_id(setvm) == boot


def test_restore_brings_back_the_resources_of_the_snapshot(ketch: Ketch, setvm: str) -> None:
    stopped(ketch, setvm)
    values = get(ketch, setvm)
    done = ketch.run("snapshot", setvm, "-n", "sized")
    assert done.returncode == 0
    bigger = int(float(values["disk"].removesuffix("GiB"))) + 1
    ketch.run("set", f"local.{setvm}.cpus=1")
    ketch.run("set", f"local.{setvm}.disk={bigger}G")
    assert get(ketch, setvm)["disk"] == f"{bigger}.0GiB"
    ketch.run("restore", f"{setvm}.sized", "--destructive")
    assert get(ketch, setvm) == values
    ketch.run("start", setvm)
    inside = guest(ketch, setvm)
    assert str(inside["cpus"]) == values["cpus"]
    assert inside["disk_bytes"] == int(float(values["disk"].removesuffix("GiB")) * GiB)


def test_global_keys(ketch: Ketch) -> None:
    assert ketch.run("get", "local.driver").stdout == "qemu\n"
    ketch.run("set", "local.driver=qemu")
    done = ketch.run("set", "local.driver=xen", check=False)
    assert done.returncode == 1 and "invalid driver 'xen'" in done.stderr
    assert ketch.run("get", "local.driver").stdout == "qemu\n"
    assert ketch.run("get", "client.primary-name").stdout == "primary\n"
    assert ketch.run("get", "local.accel").stdout.split()[0] in ("kvm", "tcg")
