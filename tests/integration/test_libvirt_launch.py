"""``ketch launch --host`` on a libvirt host and the core verbs there (issue 20).

Every test runs twice, once per URI of the same libvirtd: ``qemu:///system``, and
``qemu+ssh://root@127.0.0.1:PORT/system`` through an sshd on loopback with a key made
here and its host key verified (:mod:`sshd`).  Through ssh nothing is shared but the
wire: the base image, the seed, the kernel and the initrd reach the pool as uploaded
volumes, and the guest's SSH port, which QEMU forwards on the *host's* loopback, is
brought to ketchd's machine by the jump (``host/ssh/jump.py``), whose process the
tests look at.

The module starts its own libvirtd (:mod:`libvirtd`: private mount namespace, no network
able to start, the ``qemu.conf`` of test_libvirt_driver.py: QEMU as root, no security
driver, no virtlogd; and private directories for the definitions, the logs and the
managed save images, so nothing it makes outlives it), a ``dir`` pool named
``ketch`` in a temporary directory (the one the driver uses: found, not made; defined in
that libvirtd's private configuration, so it outlives a restart of it), and a
ketchd on a root of its own with the tiny image.  Through the real CLI:
``host add lv URI``; ``launch --host lv``; ``exec``; stop/start and restart
(boot id changes); suspend/resume (a managed save; boot id kept); a ketchd killed and
started again; libvirtd stopped (the instance Unknown with the reason, ``list``
answering) and started again (Running, the connection opened again); the managed save
removed by hand with virsh (the seed scenario); the
refusals; an SSH port taken while it was stopped (the domain is defined again with the
new one); ``stop --force``; delete/recover; ``delete --purge`` (domain and volumes
gone, checked with virsh).  The
guest's SSH is QEMU's user networking on (the host's) 127.0.0.1: traffic stays on
loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ketchcli import Ketch
from libvirtd import LIBVIRTD, Libvirtd, ketch_on_libvirtd, virsh, volumes
from sshd import SSHD, Sshd, host_add
from sshd import running as sshd_running

from ketch.host import procs
from ketch.model import ImageInfo

NAME = "lvl"
DOMAIN = f"ketch-{NAME}"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path(LIBVIRTD).exists() or not Path(SSHD).exists(),
    reason="needs root, libvirtd (libvirt-daemon-system) and sshd (openssh-server)",
)


class Env:
    def __init__(self, k: Ketch, pool: Path, lv: Libvirtd, sshd: Sshd | None) -> None:
        self.k, self.pool, self.lv, self.sshd = k, pool, lv, sshd
        self.remote = sshd is not None

    def add_host(self) -> None:
        self.k.run(*host_add("lv", self.sshd))

    def jump(self) -> int | None:
        """The pid of the instance's jump (a remote host's SSH relay) while it runs."""
        pid = procs.read_pidfile(self.k.root / "instances" / NAME / "ssh-jump.pid")
        argv = procs.cmdline(pid) if pid is not None else None
        return pid if argv is not None and "-L" in argv else None

    def info(self) -> dict[str, Any]:
        return self.k.info(NAME)

    def volumes(self) -> list[str]:
        return volumes()


@pytest.fixture(scope="module", params=["system", "ssh"])
def env(request: pytest.FixtureRequest, tiny_image: ImageInfo) -> Iterator[Env]:
    with contextlib.ExitStack() as stack:
        # through ssh: up before ketchd and down after it (its teardown's purges use it)
        sshd = stack.enter_context(sshd_running()) if request.param == "ssh" else None
        k, pool, lv = stack.enter_context(ketch_on_libvirtd(tiny_image, "ketch-lvl-"))
        yield Env(k, pool, lv, sshd)


def test_no_libvirt_network_runs() -> None:
    assert not Path("/sys/class/net/virbr0").exists()


def test_an_unknown_host_is_refused(env: Env) -> None:
    done = env.k.run("launch", "tiny", "--name", NAME, "--host", "nope", check=False)
    assert done.returncode == 2, done
    assert 'host "nope" does not exist' in done.stderr, done.stderr
    assert "ketch host list" in done.stderr
    assert env.k.json("list")["list"] == []


def test_options_the_driver_cannot_honour_are_refused(env: Env) -> None:
    env.add_host()
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
    # The direct kernel boot's files are the pool's volumes, not the local vault's.
    assert f"{NAME}.kernel" in vols and f"{NAME}.initrd" in vols, vols
    assert f"<kernel>{env.pool}/{NAME}.kernel</kernel>" in dumped, dumped
    assert str(env.k.root) not in dumped
    assert (env.jump() is not None) == env.remote
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


def test_a_jump_that_died_is_made_again_by_the_next_exec(env: Env) -> None:
    if not env.remote:
        pytest.skip("a local host's guest needs no jump")
    pid = env.jump()
    assert pid is not None
    procs.terminate(pid)
    assert env.jump() is None
    assert env.k.exec(NAME, "hostname").strip() == NAME
    assert env.jump() not in (None, pid)


def test_stop_then_start_boots_afresh(env: Env) -> None:
    before = env.k.boot_id(NAME)
    env.k.run("stop", NAME)
    assert env.k.state(NAME) == "Stopped"
    assert "shut off" in virsh("domstate", DOMAIN).stdout
    assert env.jump() is None
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
    jump = env.jump()
    env.k.kill_daemon()  # SIGKILL: the domain runs on; the next ketchd connects again
    assert env.k.state(NAME) == "Running" and env.k.boot_id(NAME) == after
    assert env.jump() == jump  # a remote guest's relay outlives ketchd and is found again
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


@contextlib.contextmanager
def squatted(port: int) -> Iterator[None]:
    """Another program listening on 127.0.0.1:``port``."""
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        squatter.bind(("127.0.0.1", port))
        squatter.listen(1)
        yield


def test_a_port_taken_while_stopped_is_replaced_in_the_domain(env: Env) -> None:
    env.k.run("stop", NAME)
    old = env.info()["ssh"]["port"]
    with squatted(old):
        started = env.k.run("start", NAME, timeout=900)
        assert f"port {old} is taken by another program" in started.stderr, started
        new = env.info()["ssh"]["port"]
        assert new != old
        if not env.remote:  # QEMU listens here; on a remote host the jump does
            assert f"127.0.0.1:{new}-:22" in virsh("dumpxml", DOMAIN).stdout
        assert env.k.exec(NAME, "hostname").strip() == NAME


def test_a_port_taken_while_suspended_is_replaced_in_the_saved_state(env: Env) -> None:
    before = env.k.boot_id(NAME)
    env.k.run("suspend", NAME)
    old = env.info()["ssh"]["port"]
    with squatted(old):
        resumed = env.k.run("start", NAME, timeout=900)
        assert f"port {old} is taken by another program" in resumed.stderr, resumed
        assert env.k.boot_id(NAME) == before  # the saved state, its definition retargeted
        assert env.info()["ssh"]["port"] != old


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
    for argv in (["set", f"local.{NAME}.cpus=2"], ["set", f"local.{NAME}.disk=8G"]):
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
