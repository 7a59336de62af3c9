"""``ketch host add|list|remove`` on a real libvirtd, local and through ssh (issue 20, first slice).

The module starts what it needs and removes it even when a test fails:

- ``libvirtd`` (Debian's, no systemd here): run by hand in the foreground with a config and
  pid file of its own (``libvirtd -f CONF -p PIDFILE``), in a private mount namespace in
  which ``/etc/libvirt/qemu/networks/autostart`` is an empty directory, so no libvirt
  network can start (the network rule: no virbr0, no dnsmasq in this machine's
  namespace; the test checks none runs).  It answers on ``qemu:///system`` as usual.  A
  lock serialises the modules that start one, and a libvirtd this module did not start
  is never touched: then the module is skipped;
- a transient ``dir`` storage pool in a temporary directory, so the free disk is a pool's;
- an ``sshd`` on a free 127.0.0.1 port, with a host key and a client key made here, for
  ``qemu+ssh://root@127.0.0.1:PORT/system``: its host key is written into a known_hosts
  that ``host add --known-hosts`` hands to ketch, which verifies it (no ``no_verify``);
- a listener on 127.0.0.1 that accepts and never speaks: a host that does not answer.

Traffic stays on loopback.  Instances on a libvirt host need the driver (a later slice):
the refusal to remove a host that has one is shown with a record put in the store while
ketchd is stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ketchcli import Ketch
from libvirtd import LIBVIRTD, Libvirtd, answers, exclusive, virsh
from sshd import SSHD, Sshd

from ketch.model import BootSpec, InstanceSpec, Intent
from ketch.store.db import Store

POOL = "ketch-test"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path(LIBVIRTD).exists() or not Path(SSHD).exists(),
    reason="needs root, libvirtd (libvirt-daemon-system) and sshd (openssh-server)",
)


class Silent:
    """A listener on 127.0.0.1 that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.held.append(conn)

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.sock.close()


class Env:
    def __init__(self, k: Ketch, lv: Libvirtd, sshd: Sshd, silent: Silent, pool: Path) -> None:
        self.k, self.lv, self.sshd, self.silent, self.pool = k, lv, sshd, silent, pool

    def ssh_uri(self, port: int | None = None) -> str:
        return f"qemu+ssh://root@127.0.0.1:{port or self.sshd.port}/system"

    def hosts(self, *args: str) -> dict[str, dict[str, Any]]:
        doc = json.loads(self.k.run("host", "list", "--format", "json", *args).stdout)
        return {row["name"]: row for row in doc["list"]}


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with exclusive():  # one module with its own libvirtd at a time
        work = Path(tempfile.mkdtemp(prefix="ketch-hosts-", dir="/tmp"))
        root = work / "root"
        root.mkdir(mode=0o700)
        lv, sshd, silent = Libvirtd(work), Sshd(work), Silent()
        k = Ketch(root)
        try:
            lv.start()
            sshd.start()
            pool = work / "pool"
            pool.mkdir()
            virsh("pool-create-as", POOL, "dir", "--target", str(pool))
            yield Env(k, lv, sshd, silent, pool)
        finally:
            try:
                k.teardown()
            finally:
                if answers():
                    virsh("pool-destroy", POOL, check=False)
                lv.stop()
                sshd.stop()
                silent.close()
                shutil.rmtree(work, ignore_errors=True)


def test_no_libvirt_network_runs() -> None:
    """The network rule: the libvirtd of these tests starts no network, bridge or dnsmasq."""
    # (a module-level check, before and after the fixture's libvirtd is up)
    assert not Path("/sys/class/net/virbr0").exists()


def firewall() -> str:
    """The root namespace's nftables and iptables rules, as text (empty without the tools)."""
    text = ""
    for argv in (["nft", "list", "ruleset"], ["iptables-save"]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            text += subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    return text


def test_qemu_system_is_reachable_with_libvirts_own_figures(env: Env) -> None:
    assert not virsh("net-list", "--name").stdout.strip()  # no network active
    assert not Path("/sys/class/net/virbr0").exists()
    assert "libvirt" not in firewall().lower()  # no chain or table of libvirt's network driver
    added = env.k.run("host", "add", "lv", "qemu:///system")
    assert added.stdout.startswith("Added host lv: "), added.stdout
    row = env.hosts()["lv"]
    assert row["state"] == "reachable" and row["reason"] == "" and row["driver"] == "libvirt"
    assert row["uri"] == "qemu:///system" and row["instances"] == 0
    info = dict(
        (k.strip(), v.strip()) for k, _, v in
        (line.partition(":") for line in virsh("nodeinfo").stdout.splitlines())
    )  # fmt: skip
    assert row["cpus"] == int(info["CPU(s)"])
    # virNodeGetInfo's KiB, which the binding gives in MiB (rounded down)
    assert 0 <= int(info["Memory size"].split()[0]) * 1024 - row["memory_total"] < 2**20
    free = int(virsh("freecell", "--all").stdout.split()[-2]) * 1024  # "Total: N KiB"
    assert 0 < row["memory_free"] <= row["memory_total"]
    assert abs(row["memory_free"] - free) < 512 * 2**20, (row["memory_free"], free)
    pool = dict(
        (k.strip(), v.strip()) for k, _, v in
        (line.partition(":") for line in virsh("pool-info", "--bytes", POOL).stdout.splitlines())
    )  # fmt: skip
    assert row["disk_pool"] == POOL
    assert row["disk_free"] == int(pool["Available"].split()[0])  # libvirt's, as it says it
    st = os.statvfs(env.pool)  # a dir pool's: the filesystem's free blocks (f_bfree)
    assert abs(row["disk_free"] - st.f_bfree * st.f_frsize) < 1024 * 2**20
    assert row["libvirt_version"].count(".") == 2
    local = env.hosts()["local"]  # the built-in host, first
    assert next(iter(env.hosts())) == "local" and local["driver"] == "qemu"
    assert local["state"] == "reachable" and local["memory_free"] > 0
    table = env.k.run("host", "list").stdout
    assert table.splitlines()[0].split()[:4] == ["Name", "Driver", "URI", "State"]
    assert "qemu:///system" in table and "Reason" not in table


def test_qemu_ssh_with_a_verified_host_key(env: Env) -> None:
    uri = env.ssh_uri()
    env.k.run(
        "host", "add", "rs", uri, "--ssh-key", str(env.sshd.client_key),
        "--known-hosts", str(env.sshd.known_hosts()),
    )  # fmt: skip
    row = env.hosts()["rs"]
    assert row["state"] == "reachable", row
    assert row["cpus"] == env.hosts()["lv"]["cpus"]  # the same libvirtd, through ssh
    config = (env.k.root / "hosts" / "rs" / "ssh_config").read_text()
    assert "StrictHostKeyChecking yes" in config and "UserKnownHostsFile" in config
    assert "StrictHostKeyChecking no" not in config
    assert json.loads((env.k.root / "hosts.json").read_text())["hosts"][1]["uri"] == uri


def test_a_host_key_other_than_the_trusted_one_is_refused(env: Env) -> None:
    """Same sshd, a known_hosts naming another key: ssh refuses, the reason says so."""
    out = env.k.run(
        "host", "add", "spoof", env.ssh_uri() + "?mode=legacy", "--ssh-key",
        str(env.sshd.client_key), "--known-hosts", str(env.sshd.known_hosts("other_key")),
    ).stdout  # fmt: skip
    assert "does not answer now: the host's SSH key is not the one trusted" in out, out
    assert env.hosts()["spoof"]["state"] == "unreachable"
    env.k.run("host", "remove", "spoof")


def test_a_host_that_does_not_answer_is_shown_in_bounded_time(env: Env) -> None:
    start = time.monotonic()
    out = env.k.run(
        "host", "add", "mute", env.ssh_uri(env.silent.port), "--ssh-key",
        str(env.sshd.client_key), "--known-hosts", str(env.sshd.known_hosts()),
        "--timeout", "2",
    ).stdout  # fmt: skip
    assert time.monotonic() - start < 8, out
    assert "does not answer now: did not answer within 2 s" in out, out
    start = time.monotonic()
    rows = env.hosts("--timeout", "3")
    took = time.monotonic() - start
    assert took < 8, took  # one deadline for all: the hosts are probed at once
    assert rows["mute"]["state"] == "unreachable"
    assert "did not answer within" in rows["mute"]["reason"]
    assert rows["lv"]["state"] == rows["rs"]["state"] == "reachable"  # not held up
    table = env.k.run("host", "list", "--timeout", "2").stdout
    assert "Reason" in table.splitlines()[0] and "did not answer" in table
    env.k.run("host", "remove", "mute")


def test_bad_input_is_refused_with_exit_2(env: Env) -> None:
    cases = [
        (["host", "add", "x", "xen:///system"], "scheme 'xen' is not one ketch drives"),
        (["host", "add", "x", "qemu:///session"], "is not /system"),
        (["host", "add", "x", "qemu://big1/system"], "qemu:// names this machine"),
        (["host", "add", "x", "qemu+ssh://h/system?command=/bin/sh"], "'command' is ketch's"),
        (["host", "add", "lv", "qemu+ssh://other/system"], 'host "lv" already exists'),
        (["host", "add", "lv2", "qemu:///system"], 'already host "lv"'),
        (["host", "add", "local", "qemu+ssh://h/system"], '"local" is the built-in host'),
        (["host", "add", "bad_name", "qemu+ssh://h/system"], "hostname rules"),
        (["host", "add", "x", "qemu+ssh://h/system", "--ssh-key", "/no/such/key"], "--ssh-key"),
        (["host", "remove", "local"], "cannot be removed"),
        (["host", "remove", "nosuch"], 'host "nosuch" does not exist'),
    ]
    for argv, says in cases:
        done = env.k.run(*argv, check=False)
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stderr.startswith("host failed: ") and says in done.stderr, (argv, done.stderr)
    assert env.k.run("host", "add", check=False).returncode == 1  # the parser's: usage
    assert set(env.hosts()) == {"local", "lv", "rs"}  # nothing was added


def test_a_stopped_libvirtd_is_unreachable_and_list_still_answers(env: Env) -> None:
    env.lv.stop()
    try:
        start = time.monotonic()
        rows = env.hosts("--timeout", "5")
        assert time.monotonic() - start < 10
        assert rows["local"]["state"] == "reachable"
        assert rows["lv"]["state"] == rows["rs"]["state"] == "unreachable"
        assert "libvirt-sock" in rows["lv"]["reason"], rows["lv"]
        assert "virt-ssh-helper" in rows["rs"]["reason"] or "libvirt" in rows["rs"]["reason"]
        assert rows["lv"]["memory_free"] is None and rows["lv"]["instances"] == 0
    finally:
        env.lv.start()
    assert env.hosts()["lv"]["state"] == "reachable"  # back: nothing about it was stored


def _spec(name: str, host: str) -> InstanceSpec:
    return InstanceSpec(
        name=name, image="tiny", image_id="ketch:tiny@test", release="test", cpus=1,
        memory=2**30, disk=2**30, boot=BootSpec(), base_disk="/nonexistent", ssh_port=42999,
        mac="52:54:00:00:00:99", instance_id="i-test", host=host,
    )  # fmt: skip


def test_remove_is_refused_while_the_host_has_instances(env: Env) -> None:
    env.k.kill_daemon(signal.SIGTERM)
    store = Store(env.k.root / "ketch.db")
    try:
        store.add(_spec("on-lv", "lv"), Intent.STOP)
    finally:
        store.close()
    done = env.k.run("host", "remove", "lv", check=False)
    assert done.returncode == 2 and 'host "lv" has 1 instance: on-lv' in done.stderr, done.stderr
    assert env.hosts()["lv"]["instances"] == 1
    env.k.kill_daemon(signal.SIGTERM)
    store = Store(env.k.root / "ketch.db")
    try:
        store.remove("on-lv")
    finally:
        store.close()
    assert env.k.run("host", "remove", "lv").stdout == "Removed host lv\n"
    assert env.k.run("host", "remove", "rs").stdout == "Removed host rs\n"
    assert set(env.hosts()) == {"local"}
    assert not (env.k.root / "hosts" / "rs").exists()  # its SSH files went with it
    assert json.loads((env.k.root / "hosts.json").read_text())["hosts"] == []
