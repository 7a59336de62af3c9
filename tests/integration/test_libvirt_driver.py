"""The libvirt driver's core on a real libvirtd through ``qemu:///system`` (issue 20, slice 2).

The module starts its own libvirtd (:mod:`libvirtd`: private mount namespace, no network
able to start) with a ``qemu.conf`` of its own seen by that libvirtd only: QEMU runs as
root (so libvirt finds ``/dev/kvm``, root's 0600 here, accessible and does not re-probe
QEMU's capabilities at each define, and reads the pool in a temporary directory), no
security driver, and QEMU's output to a file (no virtlogd);
and with directories of its own over the ones it keeps domains, pools and QEMU's logs
in, so nothing it defines outlives it, even when a test fails.

One instance of ketch's own ``tiny`` image goes through the driver: base image uploaded
into ketch's pool (a temporary directory) and verified, a qcow2 disk on it, the NoCloud
seed (with the host key ketch pins, as ``launch`` makes it), the kernel and the initrd
uploaded, a TCG domain
defined and started; its guest's SSH answers on 127.0.0.1:PORT (QEMU's user networking,
the only traffic is on loopback) with the pinned key; destroyed, it reads back as
stopped; purged, the pool is empty.  Everything is removed even when a test fails: the
domain, the pool, libvirtd.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from libvirtd import AS_ROOT, LIBVIRTD, STATE, Libvirtd, answers, exclusive, free_port, virsh

from ketch import cloudinit
from ketch.host import seed
from ketch.host.ssh import generate_keypair, write_known_hosts
from ketch.model import ImageInfo, InstanceSpec, Intent, PidStatus, State
from ketch.runtime.derive import derive
from ketch.runtime.libvirt_driver import LibvirtDriver
from ketch.runtime.libvirt_pool import Volume, base_name, disk_name, seed_name
from ketch.runtime.libvirt_xml import domain_name
from ketch.runtime.netplan import guest_network_config, seed_instance_id

T = TypeVar("T")
POOL = "ketch-test-driver"
NAME = "lvd"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path(LIBVIRTD).exists(),
    reason="needs root and libvirtd (libvirt-daemon-system)",
)


@dataclass
class Env:
    work: Path
    pool: Path
    lv: Libvirtd
    driver: LibvirtDriver
    loop: asyncio.AbstractEventLoop
    spec: InstanceSpec
    image: ImageInfo
    base: Volume | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)


def _spec(image: ImageInfo) -> InstanceSpec:
    return InstanceSpec(
        name=NAME, image="tiny", image_id=image.id, release=image.release, cpus=1,
        memory=256 * 2**20, disk=2**30, boot=image.boot, base_disk=image.disk,
        ssh_port=free_port(), mac="52:54:00:6b:76:01", instance_id="i-lvdriver01",
    )  # fmt: skip


def _seed(work: Path, spec: InstanceSpec) -> Path:
    """The NoCloud seed as launch writes it: ketch's client key, the pinned host key."""
    client = generate_keypair(work / "client_key", "ketch")
    host_public = generate_keypair(work / "host_key", f"ketch-host-{spec.name}")
    write_known_hosts(work / "known_hosts", spec.name, host_public)
    cfg = cloudinit.merge_vendor(
        None, default_user=spec.user, client_public_key=client,
        host_key_private=(work / "host_key").read_text(), host_key_public=host_public,
        hostname=spec.name,
    )  # fmt: skip
    meta = {"instance-id": seed_instance_id(spec), "local-hostname": spec.name}
    iso = work / "seed.iso"
    seed.build_seed_iso(
        iso,
        meta_data=cloudinit.meta_data(seed_instance_id(spec), spec.name),
        user_data=cloudinit.render_user_data(cfg),
        network_config=guest_network_config(spec),
        extra_files={seed.GUEST_CONFIG_FILE: seed.render_guest_config(cfg, meta).encode()},
    )
    return iso


@pytest.fixture(scope="module")
def env(tiny_image: ImageInfo) -> Iterator[Env]:
    with exclusive():  # one module with its own libvirtd at a time
        work = Path(tempfile.mkdtemp(prefix="ketch-lvd-", dir="/tmp"))
        pool = work / "pool"
        lv = Libvirtd(work, qemu_conf=AS_ROOT, private=STATE)
        loop = asyncio.new_event_loop()
        driver = LibvirtDriver("qemu:///system", pool=POOL, pool_path=str(pool))
        spec = _spec(tiny_image)
        try:
            lv.start()
            loop.run_until_complete(driver.connect())
            yield Env(work, pool, lv, driver, loop, spec, tiny_image)
        finally:
            try:
                if answers():
                    virsh("destroy", domain_name(NAME), check=False)
                    virsh("undefine", domain_name(NAME), "--nvram", check=False)
                    virsh("pool-destroy", POOL, check=False)
                    virsh("pool-undefine", POOL, check=False)
                loop.run_until_complete(driver.close())
            finally:
                loop.close()
                lv.stop()
                shutil.rmtree(work, ignore_errors=True)


def test_no_libvirt_network_runs() -> None:
    assert not Path("/sys/class/net/virbr0").exists()


def test_the_pool_is_made_when_missing(env: Env) -> None:
    assert not virsh("net-list", "--all", "--name").stdout.strip()  # not even defined
    assert virsh("pool-info", POOL, check=False).returncode != 0
    env.run(env.driver.ensure_pool())
    env.run(env.driver.ensure_pool())  # there: nothing to do
    info = virsh("pool-info", POOL).stdout
    assert "running" in info and "Autostart:      yes" in info, info
    assert env.pool.is_dir() and env.run(env.driver.volumes()) == []


def test_the_base_image_is_uploaded_and_verified(env: Env) -> None:
    src = Path(env.image.disk)
    start = time.monotonic()
    base = env.run(env.driver.upload_base(src, env.image.disk_format))
    took = time.monotonic() - start
    want = subprocess.run(["sha256sum", str(src)], capture_output=True, text=True, check=True)
    sha = want.stdout.split()[0]
    assert base.sha256 == sha and base.name == base_name(sha, env.image.disk_format)
    assert base.size == src.stat().st_size and Path(base.path).parent == env.pool
    copy = subprocess.run(["sha256sum", base.path], capture_output=True, text=True, check=True)
    assert copy.stdout.split()[0] == sha  # the pool's file is the image, byte for byte
    again = env.run(env.driver.upload_base(src, env.image.disk_format))  # reused, verified
    assert again == base and env.run(env.driver.volumes()) == [base.name]
    env.base = base
    print(f"upload+verify of {base.size} bytes: {took:.1f} s")


def test_a_domain_boots_and_its_ssh_answers_with_the_pinned_key(env: Env) -> None:
    assert env.base is not None
    spec, d = env.spec, env.driver
    virtual = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", env.image.disk],
            capture_output=True, text=True, check=True,
        ).stdout
    )["virtual-size"]  # fmt: skip
    disk = env.run(d.create_disk(spec, env.base, env.image.disk_format, base_size=virtual))
    assert disk.size == max(spec.disk, virtual)
    print("libvirt's base volume:", virsh("vol-dumpxml", "--pool", POOL, env.base.name).stdout)
    iso = _seed(env.work, spec)
    seed_vol = env.run(d.upload_seed(spec, iso))
    kernel, initrd = env.run(d.boot_files(spec))
    assert kernel is not None and initrd is not None  # the tiny image boots its kernel
    assert env.run(d.volumes()) == sorted(
        [env.base.name, disk_name(NAME), seed_name(NAME), kernel.name, initrd.name]
    )
    info = subprocess.run(
        ["qemu-img", "info", "-U", disk.path], capture_output=True, text=True, check=True
    ).stdout
    assert "file format: qcow2" in info and env.base.path in info, info
    obs = env.run(d.observe(spec))
    assert obs.pid_status is PidStatus.NONE and obs.disk_exists
    env.run(d.define(spec, disk, seed_vol, kernel=kernel, initrd=initrd))
    dumped = virsh("dumpxml", domain_name(NAME)).stdout
    assert "type='qemu'" in dumped.splitlines()[0] and f"127.0.0.1:{spec.ssh_port}-:22" in dumped
    start = time.monotonic()
    env.run(d.start(spec))
    obs = env.run(d.observe(spec))
    assert obs.pid_status is PidStatus.OURS and obs.qmp_status == "running"
    assert derive(intent=Intent.RUN, deleted=False, obs=obs).state is State.RUNNING
    argv = [
        "ssh", "-F", "none", "-i", str(env.work / "client_key"), "-p", str(spec.ssh_port),
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={env.work / 'known_hosts'}", "-o", f"HostKeyAlias={NAME}",
        "-o", "ConnectTimeout=5", f"{spec.user}@127.0.0.1", "hostname",
    ]  # fmt: skip
    last = ""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode == 0:
            break
        last = done.stderr
        time.sleep(2)
    else:
        raise AssertionError(f"ssh never answered: {last}")
    assert done.stdout.strip() == NAME
    print(f"start to ssh: {time.monotonic() - start:.1f} s")
    # Another key than the pinned one is refused: the pin is what was checked.
    other = generate_keypair(env.work / "other_key", "other")
    write_known_hosts(env.work / "known_hosts.other", NAME, other)
    argv[argv.index(f"UserKnownHostsFile={env.work / 'known_hosts'}")] = (
        f"UserKnownHostsFile={env.work / 'known_hosts.other'}"
    )
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode != 0 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr


def test_acpi_shutdown_within_its_deadline_reads_back_stopped(env: Env) -> None:
    start = time.monotonic()
    assert env.run(env.driver.powerdown(env.spec, timeout=120))
    print(f"ACPI shutdown: {time.monotonic() - start:.1f} s")
    obs = env.run(env.driver.observe(env.spec))
    assert obs.pid_status is PidStatus.NONE and obs.suspend_tag is False
    assert derive(intent=Intent.STOP, deleted=False, obs=obs).state is State.STOPPED


def test_destroy_is_stop_force_and_reads_back_stopped(env: Env) -> None:
    env.run(env.driver.start(env.spec))
    assert env.run(env.driver.observe(env.spec)).pid_status is PidStatus.OURS
    assert env.run(env.driver.kill(env.spec))
    assert not env.run(env.driver.kill(env.spec))  # not running: nothing to end
    obs = env.run(env.driver.observe(env.spec))
    assert obs.pid_status is PidStatus.NONE
    assert "shut off" in virsh("domstate", domain_name(NAME)).stdout
    derived = derive(intent=Intent.RUN, deleted=False, obs=obs)
    assert derived.state is State.STOPPED  # with "exited unexpectedly": it was to run
    assert derive(intent=Intent.STOP, deleted=False, obs=obs).inconsistencies == ()


def test_purge_leaves_nothing_in_the_pool(env: Env) -> None:
    env.run(env.driver.start(env.spec))
    env.run(env.driver.purge(env.spec))
    assert virsh("dominfo", domain_name(NAME), check=False).returncode != 0  # undefined
    assert env.run(env.driver.volumes()) == []
    assert list(env.pool.iterdir()) == []
    obs = env.run(env.driver.observe(env.spec))
    assert obs.pid_status is PidStatus.NONE and not obs.disk_exists
    env.run(env.driver.purge(env.spec))  # again: nothing there, nothing fails
