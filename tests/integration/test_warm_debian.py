"""Warm launch of the debian-12 image on real VMs (QEMU/TCG) through the real CLI.

Two instances warm-launched from one template (``ketch image warm debian-12``)
are two machines: their own SSH host keys (served and pinned), machine-ids,
hostnames, instance-ids, MACs and bytes of /dev/urandom right after launch; their
clocks are the host's; the real cloud-init, re-run on each clone's seed, applied
the user data (a ``write_files`` file, a ``runcmd`` marker) and left nothing of
the template behind.  A UEFI launch has its own template (``--firmware uefi``): its
clone is a UEFI machine with its user data that resumes from a suspend and
cold-boots through OVMF from its own copy of the template's variables.  The image
is the one ``test_debian_image`` builds into the test cache.  Its own storage root;
few launches (a cold debian-12 boot is over a minute under TCG); bounded waits only,
no timing asserted.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ketchcli import Ketch, unique
from test_warm import guest_facts, pinned_host_key, served_host_key, spec_of

from ketch.images import debian
from ketch.model import ImageInfo

TOOLS = ("qemu-system-x86_64", "qemu-img", "ssh", "ssh-keyscan", "debootstrap", "mkfs.ext4")
pytestmark = [
    pytest.mark.vm,
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in TOOLS), reason="needs QEMU, OpenSSH and debootstrap"
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="building the debian-12 image needs root"),
]

TIMEOUT = 1800  # seconds: a bound against hangs under TCG on a loaded host, not a target
USER_DATA = b"""#cloud-config
write_files:
  - path: /etc/warm-check
    content: "written by write_files\\n"
    permissions: "0640"
runcmd:
  - echo ran > /var/tmp/runcmd-marker
"""


@pytest.fixture(scope="module")
def warm_debian() -> Iterator[Ketch]:
    """A storage root with the debian-12 image (hard links to the test cache's) and
    its template, made by ``ketch image warm``."""
    cache = Path(os.environ.get("KETCH_TEST_CACHE") or "~/.cache/ketch-test/images").expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    image: ImageInfo = asyncio.run(debian.build_debian(cache))
    root = Path(tempfile.mkdtemp(prefix="ketch-warmdeb-", dir="/tmp"))
    src = Path(image.disk).parent
    dst = root / "vault" / "built" / debian.NAME / src.name
    dst.mkdir(parents=True)
    for f in src.iterdir():
        try:
            (dst / f.name).hardlink_to(f)
        except OSError:
            shutil.copy2(f, dst / f.name)
    k = Ketch(root)
    try:
        yield k
    finally:
        k.teardown()
        shutil.rmtree(root, ignore_errors=True)


def warm(k: Ketch, *args: str) -> None:
    """Make the template of debian-12 for these options (``ketch image warm``)."""
    made = k.run("image", "warm", debian.NAME, *args, timeout=TIMEOUT)
    assert made.stdout.startswith("Template: debian-12"), made.stdout


def launch(k: Ketch, prefix: str, *args: str) -> tuple[str, str]:
    name = unique(prefix)
    done = k.run(
        "launch", debian.NAME, "--name", name, "--cloud-init", "-", "--timeout", str(TIMEOUT),
        *args, input=USER_DATA, timeout=TIMEOUT + 60,
    )  # fmt: skip
    return name, done.stderr


def test_two_warm_debian_instances_are_two_machines_with_their_user_data(
    warm_debian: Ketch,
) -> None:
    k = warm_debian
    warm(k)
    names: list[str] = []
    facts = []
    try:
        for i in range(2):
            name, said = launch(k, f"wdeb{i}")
            names.append(name)
            assert "Launching cold" not in said, said
            facts.append(guest_facts(k, name))  # right after launch: urandom first
        for name in names:
            assert k.info(name)["launched"].startswith("warm (template debian-12")
            assert served_host_key(k, name) == pinned_host_key(k, name)
        for key in ("urandom", "hostname", "machine-id", "mac", "iid"):
            assert len({f[key] for f in facts}) == 2, key
        assert len({pinned_host_key(k, n) for n in names}) == 2
        for name, f in zip(names, facts, strict=True):
            assert f["hostname"] == name
            assert f["clock_ok"] == "True", f
            assert f["mac"] == spec_of(k, name)["mac"]
            assert f["iid"] == spec_of(k, name)["instance_id"]
            assert len(f["machine-id"]) == 32 and len(f["urandom"]) == 64
            assert (f["file"], f["marker"], f["mode"]) == ("written by write_files", "ran", "640")
            # the real cloud-init ran, to the end, on this instance's seed alone
            status = k.exec(name, "cloud-init", "status").split()
            assert status == ["status:", "done"], status
            left = k.exec(
                name, "sh", "-c",
                "grep -l ketch-template /etc/hostname /etc/hosts;"
                " grep -l 10.0.2.15/24 /etc/systemd/network/*;"
                " sudo ls /var/lib/cloud/instances",
            ).split()  # fmt: skip
            assert left == [spec_of(k, name)["instance_id"]], left  # no template's
    finally:
        for name in names:
            k.run("delete", "--purge", name, check=False)


def test_a_uefi_template_gives_warm_uefi_instances_that_live_through_the_lifecycle(
    warm_debian: Ketch,
) -> None:
    """A UEFI launch has a template of its own (the firmware is part of the key): the
    clone starts on a copy of the template's variable store, is a UEFI machine with its
    user data, resumes from a suspend, and cold-boots through OVMF from its own store."""
    k = warm_debian
    warm(k, "--firmware", "uefi")
    name, said = launch(k, "wefi", "--firmware", "uefi")
    try:
        assert "Launching cold" not in said, said
        assert k.info(name)["launched"].startswith("warm (template debian-12")
        idir = k.root / "instances" / name
        assert (idir / "efivars.fd").stat().st_size > 0  # its own copy
        f = guest_facts(k, name)
        assert f["hostname"] == name and f["clock_ok"] == "True", f
        assert (f["file"], f["marker"], f["mode"]) == ("written by write_files", "ran", "640")
        assert served_host_key(k, name) == pinned_host_key(k, name)
        efi = "test -d /sys/firmware/efi && echo efi"
        assert k.exec(name, "sh", "-c", efi).strip() == "efi"
        boot = k.boot_id(name)
        k.run("suspend", name)
        assert k.state(name) == "Suspended"
        k.run("start", name, "--timeout", str(TIMEOUT), timeout=TIMEOUT)
        assert k.boot_id(name) == boot  # the same boot, resumed
        k.run("stop", name, timeout=TIMEOUT)
        k.run("start", name, "--timeout", str(TIMEOUT), timeout=TIMEOUT)  # OVMF, GRUB, kernel
        assert k.boot_id(name) != boot
        assert k.exec(name, "sh", "-c", efi).strip() == "efi"
        assert k.exec(name, "hostname").strip() == name
        assert served_host_key(k, name) == pinned_host_key(k, name)
    finally:
        k.run("delete", "--purge", name, check=False)
