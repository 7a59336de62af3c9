"""An sshd on 127.0.0.1 for the ``qemu+ssh://`` hosts of the integration tests.

Shared by test_hosts.py, test_libvirt_launch.py and test_libvirt_snapshots.py: ``sshd``
on a free loopback port, a host key and a client key made by the test, root allowed with
that key only; its known_hosts line is what ``ketch host add --known-hosts`` is given
(verified, never ``no_verify``): :func:`host_add`.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from libvirtd import free_port

SSHD = "/usr/sbin/sshd"


class Sshd:
    """An sshd on 127.0.0.1:PORT taking root with one key made here."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.address = ("127.0.0.1", self.port)
        for name in ("host_key", "client_key", "other_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / name)],
                check=True, timeout=30,
            )  # fmt: skip
        self.client_key = work / "client_key"
        (work / "authorized_keys").write_text((work / "client_key.pub").read_text())
        (work / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {work / 'host_key'}\n"
            f"PidFile {work / 'sshd.pid'}\nAuthorizedKeysFile {work / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\n"  # the keys live under /tmp, which is world-writable
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def known_hosts(self, key: str = "host_key") -> Path:
        """A known_hosts naming ``key`` as 127.0.0.1:PORT's (the right one by default)."""
        kind, blob = (self.work / f"{key}.pub").read_text().split()[:2]
        path = self.work / f"known_hosts.{key}"
        path.write_text(f"[127.0.0.1]:{self.port} {kind} {blob}\n")
        return path

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation dir
        log = self.work / "sshd.log"
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.work / "sshd_config")],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            assert self.proc.poll() is None, log.read_text()
            time.sleep(0.1)
        raise AssertionError(f"sshd did not listen: {log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None


@contextlib.contextmanager
def running() -> Iterator[Sshd]:
    """An :class:`Sshd` started in a directory of its own; stopped and removed after."""
    work = Path(tempfile.mkdtemp(prefix="ketch-sshd-", dir="/tmp"))
    sshd = Sshd(work)
    try:
        sshd.start()
        yield sshd
    finally:
        sshd.stop()
        shutil.rmtree(work, ignore_errors=True)


def host_add(name: str, sshd: Sshd | None) -> list[str]:
    """``host add NAME URI ...``: the libvirtd on ``qemu:///system``, or (``sshd`` given)
    the same one through ``qemu+ssh://root@127.0.0.1:PORT/system``, its key and its
    host key pinned."""
    if sshd is None:
        return ["host", "add", name, "qemu:///system"]
    uri = f"qemu+ssh://root@127.0.0.1:{sshd.port}/system"
    return [
        "host", "add", name, uri, "--ssh-key", str(sshd.client_key),
        "--known-hosts", str(sshd.known_hosts()),
    ]  # fmt: skip
