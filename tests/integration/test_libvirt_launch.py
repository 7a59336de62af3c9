"""``ketch launch --host`` on a libvirt host and the core verbs there (issue 20, slice 3).

The module starts its own libvirtd (:mod:`libvirtd`: private mount namespace, no network
able to start, the ``qemu.conf`` of test_libvirt_driver.py: QEMU as root, no security
driver, no virtlogd; and private directories for the definitions, the logs and the
managed save images, so nothing it makes outlives it), a ``dir`` pool named
``ketch`` in a temporary directory (the one the driver uses: found, not made; defined in
that libvirtd's private configuration, so it outlives a restart of it), and a
ketchd on a root of its own with the tiny image.  Through the real CLI:
``host add lv qemu:///system``; ``launch --host lv``; ``exec``; stop/start and restart
(boot id changes); suspend/resume (a managed save; boot id kept); a ketchd killed and
started again; libvirtd stopped (the instance Unknown with the reason, ``list``
answering) and started again (Running, the connection opened again); the managed save
removed by hand with virsh (the seed scenario); the
refusals; an SSH port taken while it was stopped (the domain is defined again with the
new one); ``stop --force``; delete/recover; ``delete --purge`` (domain and volumes
gone, checked with virsh).  The
guest's SSH is QEMU's user networking on 127.0.0.1: traffic stays on loopback.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ketchcli import Ketch
from libvirtd import LIBVIRTD, Libvirtd, pooled, virsh

from ketch.model import ImageInfo

NAME = "lvl"
DOMAIN = f"ketch-{NAME}"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path(LIBVIRTD).exists(),
    reason="needs root and libvirtd (libvirt-daemon-system)",
)


class Env:
    def __init__(self, k: Ketch, pool: Path, lv: Libvirtd) -> None:
        self.k, self.pool, self.lv = k, pool, lv

    def info(self) -> dict[str, Any]:
        return self.k.info(NAME)

    def volumes(self) -> list[str]:
        virsh("pool-refresh", "ketch")
        done = virsh("vol-list", "--pool", "ketch", check=False)
        assert done.returncode == 0, done.stderr
        return sorted(line.split()[0] for line in done.stdout.splitlines() if line.strip())


@pytest.fixture(scope="module")
def env(tiny_image: ImageInfo) -> Iterator[Env]:
    with pooled("ketch-lvl-", tiny_image, (DOMAIN,)) as p:
        yield Env(p.k, p.pool, p.lv)


def test_no_libvirt_network_runs() -> None:
    assert not Path("/sys/class/net/virbr0").exists()


def test_an_unknown_host_is_refused(env: Env) -> None:
    done = env.k.run("launch", "tiny", "--name", NAME, "--host", "nope", check=False)
    assert done.returncode == 2, done
    assert 'host "nope" does not exist' in done.stderr, done.stderr
    assert "ketch host list" in done.stderr
    assert env.k.json("list")["list"] == []


def test_options_the_driver_cannot_honour_are_refused(env: Env) -> None:
    env.k.run("host", "add", "lv", "qemu:///system")
    for extra, what in (
        (["--forward", "8080:80"], "launch --forward"),
        (["--mount", f"{env.pool}:/mnt"], "launch --mount"),
    ):
        done = env.k.run("launch", "tiny", "--name", NAME, "--host", "lv", *extra, check=False)
        assert done.returncode == 2, done
        assert f"{what} is not supported on libvirt hosts yet" in done.stderr, done.stderr
        assert "(driver libvirt)" in done.stderr
    assert env.k.json("list")["list"] == [] and env.volumes() == []


def test_launch_on_the_libvirt_host(env: Env) -> None:
    env.k.run("launch", "tiny", "--name", NAME, "--host", "lv", "--memory", "256M", timeout=900)
    assert "running" in virsh("domstate", DOMAIN).stdout
    dumped = virsh("dumpxml", DOMAIN).stdout
    assert "type='qemu'" in dumped.splitlines()[0]
    vols = env.volumes()
    assert f"{NAME}.qcow2" in vols and f"{NAME}-seed.iso" in vols, vols
    assert any(v.startswith("base-") for v in vols), vols
    info = env.info()
    assert info["state"] == "Running" and info["host"] == "lv", info
    assert info["inconsistencies"] == []
    (entry,) = env.k.json("list")["list"]
    assert entry["host"] == "lv" and entry["state"] == "Running"
    table = env.k.run("list").stdout
    assert table.splitlines()[0].split() == ["Name", "State", "IPv4", "Image", "Host"], table
    assert table.splitlines()[1].split()[-1] == "lv"
    assert "Host:" in env.k.run("info", NAME).stdout


def test_exec_reaches_the_guest(env: Env) -> None:
    assert env.k.exec(NAME, "hostname").strip() == NAME
    done = env.k.run("exec", NAME, "--", "sh", "-c", "exit 7", check=False)
    assert done.returncode == 7


def test_stop_then_start_boots_afresh(env: Env) -> None:
    before = env.k.boot_id(NAME)
    env.k.run("stop", NAME)
    assert env.k.state(NAME) == "Stopped"
    assert "shut off" in virsh("domstate", DOMAIN).stdout
    env.k.run("start", NAME, timeout=900)
    assert env.k.state(NAME) == "Running"
    assert env.k.boot_id(NAME) != before


def test_suspend_and_resume_keep_the_boot(env: Env) -> None:
    before = env.k.boot_id(NAME)
    env.k.run("suspend", NAME)
    assert env.k.state(NAME) == "Suspended"
    assert "shut off" in virsh("domstate", DOMAIN).stdout
    assert "Managed save:   yes" in virsh("dominfo", DOMAIN).stdout
    env.k.run("start", NAME, timeout=900)
    assert env.k.state(NAME) == "Running"
    assert env.k.boot_id(NAME) == before
    assert "Managed save:   no" in virsh("dominfo", DOMAIN).stdout


def test_restart_and_a_restarted_ketchd_see_the_same_domain(env: Env) -> None:
    before = env.k.boot_id(NAME)
    env.k.run("restart", NAME, timeout=900)
    assert env.k.state(NAME) == "Running"
    after = env.k.boot_id(NAME)
    assert after != before
    env.k.kill_daemon()  # SIGKILL: the domain runs on; the next ketchd connects again
    assert env.k.state(NAME) == "Running" and env.k.boot_id(NAME) == after
    done = env.k.run("host", "remove", "lv", check=False)
    assert done.returncode == 2 and "lvl" in done.stderr, done


def test_a_managed_save_removed_by_hand_reads_right(env: Env) -> None:
    """The seed scenario on libvirt: the saved state gone behind ketch's back."""
    env.k.run("suspend", NAME)
    virsh("managedsave-remove", DOMAIN)
    assert env.k.state(NAME) == "Stopped"
    assert "missing-suspend-tag" in env.k.codes(NAME)
    forced = env.k.run("stop", "--force", NAME)
    assert "'suspend' tag was missing" in forced.stderr + forced.stdout, forced
    assert env.k.state(NAME) == "Stopped" and env.k.codes(NAME) == set()
    env.k.run("start", NAME, timeout=900)
    assert env.k.state(NAME) == "Running"


def test_a_port_taken_while_stopped_is_replaced_in_the_domain(env: Env) -> None:
    env.k.run("stop", NAME)
    old = env.info()["ssh"]["port"]
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        squatter.bind(("127.0.0.1", old))
        squatter.listen(1)
        started = env.k.run("start", NAME, timeout=900)
        assert f"port {old} is taken by another program" in started.stderr, started
        new = env.info()["ssh"]["port"]
        assert new != old and f"127.0.0.1:{new}-:22" in virsh("dumpxml", DOMAIN).stdout
        assert env.k.exec(NAME, "hostname").strip() == NAME


def test_libvirtd_gone_makes_the_instance_unknown_and_list_answers(env: Env) -> None:
    assert env.k.state(NAME) == "Running"
    env.lv.stop()  # its domains' QEMUs run on; a libvirtd started again takes them back
    try:
        (entry,) = env.k.json("list")["list"]
        assert entry["state"] == "Unknown" and entry["host"] == "lv", entry
        doc = env.k.json("info", "--no-runtime-information", NAME)["info"][NAME]
        said = [i["message"] for i in doc["inconsistencies"]]
        assert any('host "lv" could not be asked' in m for m in said), said
        assert env.k.run("stop", NAME, check=False).returncode == 2
    finally:
        env.lv.start()
    assert env.k.state(NAME) == "Running"  # the connection is opened again
    assert env.k.exec(NAME, "hostname").strip() == NAME


def test_what_the_driver_lacks_is_refused_naming_it(env: Env) -> None:
    env.k.run("stop", NAME)
    for argv in (["snapshot", NAME], ["clone", NAME], ["set", f"local.{NAME}.cpus=2"]):
        done = env.k.run(*argv, check=False)
        assert done.returncode == 2, (argv, done)
        assert "not supported on libvirt hosts yet" in done.stderr, (argv, done.stderr)
        assert 'host "lv" (driver libvirt)' in done.stderr
    assert env.k.state(NAME) == "Stopped"


def test_stop_force_ends_the_domain(env: Env) -> None:
    env.k.run("start", NAME, timeout=900)
    env.k.run("stop", "--force", NAME)
    assert env.k.state(NAME) == "Stopped"
    assert "shut off" in virsh("domstate", DOMAIN).stdout
    env.k.run("start", NAME, timeout=900)
    env.k.run("suspend", NAME)
    env.k.run("stop", "--force", NAME)  # discards the saved state
    assert env.k.state(NAME) == "Stopped"
    assert "Managed save:   no" in virsh("dominfo", DOMAIN).stdout


def test_delete_recover_then_purge_leaves_nothing(env: Env) -> None:
    env.k.run("delete", NAME)
    assert env.k.state(NAME) == "Deleted"
    env.k.run("recover", NAME)
    assert env.k.state(NAME) == "Stopped"
    env.k.run("start", NAME, timeout=900)
    env.k.run("delete", "--purge", NAME)
    assert virsh("dominfo", DOMAIN, check=False).returncode != 0  # undefined
    assert env.volumes() == []  # disk, seed, and the base no volume is backed by
    assert list(env.pool.iterdir()) == []
    assert json.loads(env.k.run("list", "--format", "json").stdout)["list"] == []
    assert not (env.k.root / "instances" / NAME).exists()
