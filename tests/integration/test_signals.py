"""``stop --force`` ends a QEMU that answers nothing, through its pidfd (issue 12 item 9).

A QEMU frozen with SIGSTOP never answers QMP ``quit``, so the driver falls back
to signals: SIGTERM (queued, a stopped process does not act on it), then
SIGKILL, both sent through the pidfd opened on the very QEMU it verified.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest
from ketchcli import Ketch

from ketch.host import procs

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("qemu-system-x86_64", "qemu-img", "ssh")),
        reason="needs QEMU and OpenSSH",
    ),
]


def test_force_stop_kills_a_frozen_qemu(ketch: Ketch) -> None:
    with ketch.launched("frozen", "--memory", "512M") as name:
        pid = ketch.qemu_pid(name)
        assert pid is not None and procs.alive(pid)
        argv = procs.cmdline(pid)
        assert argv is not None and "qemu-system" in argv[0]
        os.kill(pid, signal.SIGSTOP)
        try:
            ketch.run("stop", "--force", name, timeout=120)
        finally:
            if procs.alive(pid):
                os.kill(pid, signal.SIGCONT)
        assert not procs.alive(pid)
        assert ketch.state(name) == "Stopped"
        ketch.run("start", name)
        assert ketch.state(name) == "Running"
