"""A classic mount on a warm-launched tiny instance: its port on the template's bus.

A warm clone's devices are its template's, which has the warm agent's
virtio-serial controller (``warmser0``) and not the mounts' one: the mount's
port is hot-plugged on the agent's bus, the clone's QEMU argv keeps its
template's layout, and the mount survives suspend/resume (a warm-layout saved
state) and a cold start (then with the mounts' controller, recorded at the
warm launch).  Its own storage root and template: ``test_warm.py``'s fixture.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ketchcli import Ketch, unique
from test_warm import MEMORY, warm_root

from ketch.host import procs

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="the SFTP server's confinement needs root"),
]

_ = warm_root  # the template-making fixture, its own per module (its own storage root)
TARGET = "/mnt/share"


def qemu_argv(name: str) -> list[str]:
    for pid in os.listdir("/proc"):
        argv = procs.cmdline(int(pid)) if pid.isdigit() else None
        if argv and "qemu-system" in argv[0] and f"ketch-{name}," in " ".join(argv):
            return argv
    raise AssertionError(f"no QEMU runs {name}")


def read(k: Ketch, name: str) -> str:
    return k.exec(name, "cat", f"{TARGET}/hello.txt")


def test_a_warm_clones_mount_goes_over_the_templates_bus(warm_root: Ketch, tmp_path: Path) -> None:
    k = warm_root
    share = tmp_path / "share"
    share.mkdir()
    (share / "hello.txt").write_text("hello warm\n")
    name = unique("mwm")
    k.run("launch", "tiny", "--name", name, "--memory", MEMORY, "--timeout", "900",
          "--mount", f"{share}:{TARGET}", timeout=900)  # fmt: skip
    try:
        assert k.info(name)["launched"].startswith("warm (template tiny")
        argv = qemu_argv(name)
        assert "virtio-serial-pci,id=warmser0" in argv
        assert "virtio-serial-pci,id=mountser0" not in argv  # the template's layout
        assert k.info(name)["mounts"][TARGET]["transport"] == "virtio-serial"
        assert read(k, name) == "hello warm\n"
        k.run("suspend", name)
        k.run("start", name)
        assert k.info(name)["mounts"][TARGET]["transport"] == "virtio-serial"
        assert read(k, name) == "hello warm\n"
        k.run("stop", name)
        k.run("start", name)  # cold now: the mounts' controller, recorded at the launch
        assert "virtio-serial-pci,id=mountser0" in qemu_argv(name)
        assert k.info(name)["mounts"][TARGET]["transport"] == "virtio-serial"
        assert read(k, name) == "hello warm\n"
    finally:
        k.run("delete", "--purge", name, check=False)
