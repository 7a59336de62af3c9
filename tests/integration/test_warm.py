"""Warm launch on real VMs (tiny image, QEMU/TCG) through the real CLI.

Five instances warm-launched from one template are five different machines
(host keys served and pinned, machine-ids, hostnames, MACs, instance-ids, kernel
boot ids, the bytes of /dev/urandom right after launch), their clocks are the host's, their
user data is applied as on a cold-launched sixth; a warm instance lives
through every lifecycle verb and outlives its template; a broken template
means a cold launch that says so.  Its own storage root: the other modules'
launches stay cold.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import _seed_vault
from ketchcli import Ketch, unique

from ketch.model import ImageInfo

pytestmark = pytest.mark.vm

MEMORY = "256M"
USER_DATA = b"""#cloud-config
write_files:
  - path: /etc/warm-check
    content: "written by write_files\\n"
    permissions: "0640"
runcmd:
  - echo ran > /var/tmp/runcmd-marker
"""


@pytest.fixture(scope="module")
def warm_root(tiny_image: ImageInfo) -> Iterator[Ketch]:
    root = Path(tempfile.mkdtemp(prefix="ketch-warm-", dir="/tmp"))
    _seed_vault(root, tiny_image)
    k = Ketch(root)
    try:
        made = k.run("image", "warm", "tiny", "--memory", MEMORY, timeout=900)
        assert made.stdout.startswith("Template: tiny")
        yield k
    finally:
        k.teardown()
        shutil.rmtree(root, ignore_errors=True)


def launch(k: Ketch, prefix: str, *args: str) -> tuple[str, str]:
    """(name, stderr) of a tiny instance launched with the module's user data."""
    name = unique(prefix)
    done = k.run(
        "launch", "tiny", "--name", name, "--memory", MEMORY, "--cloud-init", "-",
        "--timeout", "900", *args,
        input=USER_DATA, timeout=900,
    )  # fmt: skip
    return name, done.stderr


def guest_facts(k: Ketch, name: str) -> dict[str, str]:
    before = time.time()
    out = k.exec(
        name,
        "sudo",
        "sh",
        "-c",
        "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo;"
        " date +%s; hostname; cat /etc/machine-id 2>/dev/null || echo none;"
        " cat /sys/class/net/e*/address | head -n 1;"
        " cat /var/lib/cloud/data/instance-id; cat /etc/warm-check; cat /var/tmp/runcmd-marker;"
        " stat -c %a /etc/warm-check; cat /proc/sys/kernel/random/boot_id",
    ).splitlines()
    after = time.time()
    keys = [
        "urandom",
        "clock",
        "hostname",
        "machine-id",
        "mac",
        "iid",
        "file",
        "marker",
        "mode",
        "boot",
    ]
    assert len(out) == len(keys), out
    facts = dict(zip(keys, out, strict=True))
    facts["clock_ok"] = str(before - 2 <= int(facts["clock"]) <= after + 2)
    return facts


def served_host_key(k: Ketch, name: str) -> str:
    port = k.info(name)["ssh"]["port"]
    out = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    (line,) = [ln for ln in out.splitlines() if ln and not ln.startswith("#")]
    return line.split()[2]


def spec_of(k: Ketch, name: str) -> dict[str, Any]:
    doc = json.loads((k.root / "instances" / name / "instance.json").read_text())
    return dict(doc["spec"])


def pinned_host_key(k: Ketch, name: str) -> str:
    return (k.root / "instances" / name / "known_hosts").read_text().split()[2]


def test_five_warm_instances_are_five_machines_like_a_cold_one(warm_root: Ketch) -> None:
    k = warm_root
    names, facts = [], []
    try:
        for i in range(5):
            name, _ = launch(k, f"warm{i}")
            names.append(name)
            facts.append(guest_facts(k, name))  # right after launch: urandom first
        for name in names:
            assert k.info(name)["launched"].startswith("warm (template tiny")
            assert served_host_key(k, name) == pinned_host_key(k, name)
        for key in ("urandom", "hostname", "machine-id", "mac", "iid", "boot"):
            assert len({f[key] for f in facts}) == 5, key
        keys = {pinned_host_key(k, n) for n in names}
        assert len(keys) == 5
        for name, f in zip(names, facts, strict=True):
            assert f["hostname"] == name
            assert f["clock_ok"] == "True", f
            assert f["mac"] == spec_of(k, name)["mac"]  # the agent gave it the spec's MAC
            assert f["iid"] == spec_of(k, name)["instance_id"]
            assert len(f["machine-id"]) == 32 and len(f["urandom"]) == 64
        for name in names:  # their facts are taken: the cold one boots on a quieter host
            k.run("delete", "--purge", name)
        cold, _ = launch(k, "cold", "--cold")
        names.append(cold)
        assert k.info(cold)["launched"] == "cold"
        c = guest_facts(k, cold)
        for f in facts:
            assert (f["file"], f["marker"], f["mode"]) == (c["file"], c["marker"], c["mode"])
        assert (c["file"], c["marker"], c["mode"]) == ("written by write_files", "ran", "640")
        assert c["urandom"] not in {f["urandom"] for f in facts}
    finally:
        for name in names:
            k.run("delete", "--purge", name, check=False)


def test_a_warm_instance_lives_through_the_lifecycle_and_outlives_its_template(
    warm_root: Ketch,
) -> None:
    k = warm_root
    name, _ = launch(k, "life")
    clone = f"{name}-c"
    try:
        assert k.info(name)["launched"].startswith("warm")
        k.run("exec", name, "--", "sh", "-c", "echo kept | sudo tee /var/tmp/kept")
        k.run("suspend", name)
        assert k.state(name) == "Suspended"
        k.run("start", name)  # resumed in the warm device layout
        assert k.exec(name, "cat", "/var/tmp/kept").strip() == "kept"
        boot = k.boot_id(name)
        k.run("stop", name)
        k.run("start", name)  # a cold boot from its own disk
        assert k.boot_id(name) != boot
        assert k.exec(name, "hostname").strip() == name
        assert served_host_key(k, name) == pinned_host_key(k, name)
        k.run("stop", name)
        k.run("snapshot", name, "--name", "s1")
        k.run("start", name)
        k.run("exec", name, "--", "sudo", "rm", "/var/tmp/kept")
        k.run("stop", name)
        k.run("restore", "--destructive", f"{name}.s1")
        k.run("clone", name, "--name", clone)
        k.run("start", name, clone)
        assert k.exec(name, "cat", "/var/tmp/kept").strip() == "kept"
        assert k.exec(clone, "hostname").strip() == clone
        # the template goes: the instance does not need it
        pruned = k.run("image", "prune", "--days", "0").stdout
        assert "Removed template tiny" in pruned
        assert not list((k.root / "templates").glob("*/memory.ram"))
        k.run("stop", name)
        k.run("start", name)
        assert k.exec(name, "cat", "/var/tmp/kept").strip() == "kept"
    finally:
        k.run("delete", "--purge", name, clone, check=False)
        k.run("image", "warm", "tiny", "--memory", MEMORY, timeout=900)  # for the next test


def test_a_warm_instance_with_a_larger_disk_than_its_templates_gets_the_room(
    warm_root: Ketch,
) -> None:
    """The agent grows the root filesystem only when told the disk is larger (``grow``);
    a clone of the template's own size keeps the template's filesystem as it is."""
    k = warm_root

    def root_kib(name: str) -> int:
        return int(k.exec(name, "sh", "-c", "df -k / | tail -n 1").split()[1])

    same, _ = launch(k, "same")
    try:
        assert k.info(same)["launched"].startswith("warm")
        size = next(iter(k.info(same)["disks"].values()))["total"]
        kib = root_kib(same)
        larger, said = launch(k, "larger", "--disk", str(int(size) + (2 << 30)))
        try:
            assert k.info(larger)["launched"].startswith("warm"), said
            assert root_kib(larger) > kib + (3 << 20) // 2  # grown by most of the 2 GiB
        finally:
            k.run("delete", "--purge", larger, check=False)
    finally:
        k.run("delete", "--purge", same, check=False)


def test_a_broken_template_means_a_cold_launch_that_says_so(warm_root: Ketch) -> None:
    k = warm_root
    (memory,) = (k.root / "templates").glob("*/memory.ram")
    memory.chmod(0o600)
    memory.unlink()
    name, said = launch(k, "broken")
    try:
        assert "Launching cold: the template of tiny is damaged (memory.ram: " in said
        assert k.info(name)["launched"] == "cold"
        f = guest_facts(k, name)
        assert (f["hostname"], f["marker"]) == (name, "ran")
        # ... and the template is made again, in the background
        deadline = time.monotonic() + 900
        while not any(t["current"] for t in k.json("image", "list")["templates"]):
            assert time.monotonic() < deadline, "the template was not made again"
            time.sleep(2)
        assert list((k.root / "templates").glob("*/memory.ram"))
    finally:
        k.run("delete", "--purge", name, check=False)


def test_a_memory_file_cut_short_is_found_before_a_clone_hangs_on_it(warm_root: Ketch) -> None:
    """A shorter memory file would load (QEMU extends it with zeros) and the clone would
    hang until the hand-over times out: the template's check finds it first."""
    k = warm_root
    wait_for_template(k)
    (memory,) = (k.root / "templates").glob("*/memory.ram")
    cut = memory.with_name("cut")
    with memory.open("rb") as src:
        cut.write_bytes(src.read(memory.stat().st_size // 2))
    cut.replace(memory)
    name, said = launch(k, "cut")
    try:
        assert "Launching cold: the template of tiny is damaged (its memory file is" in said
        assert k.info(name)["launched"] == "cold"
        wait_for_template(k)  # made again in the background
    finally:
        k.run("delete", "--purge", name, check=False)


def wait_for_template(k: Ketch) -> None:
    deadline = time.monotonic() + 900  # a bound against a hang, not a timing criterion
    while not any(t["current"] for t in k.json("image", "list")["templates"]):
        assert time.monotonic() < deadline, "no current template"
        time.sleep(2)
