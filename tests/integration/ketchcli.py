"""Drive the real ``ketch`` CLI against one storage root, as a user would."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ketch.host import procs


def unique(prefix: str) -> str:
    """An instance name no other test uses: ``<prefix>-<6 hex digits>``."""
    return f"{prefix}-{secrets.token_hex(3)}"


class Ketch:
    """Runs ``python -m ketch.cli.main`` with ``KETCH_STORAGE`` set to ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ, "KETCH_STORAGE": str(root)}
        self.prefix: list[str] = []  # what the CLI runs under (e.g. ``ip netns exec NS``)

    def run(
        self, *args: str, input: bytes | None = None, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.prefix, sys.executable, "-m", "ketch.cli.main", *args],
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"ketch {' '.join(args)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    @contextlib.contextmanager
    def launched(
        self,
        prefix: str,
        *args: str,
        image: str = "tiny",
        input: bytes | None = None,
        timeout: float = 600,
    ) -> Iterator[str]:
        """An instance ``<prefix>-<random>`` launched with ``args``; purged afterwards."""
        name = unique(prefix)
        self.run("launch", image, "--name", name, *args, input=input, timeout=timeout)
        try:
            yield name
        finally:
            self.run("delete", "--purge", name, check=False)

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--format", "json").stdout)

    def info(self, name: str) -> dict[str, Any]:
        return dict(self.json("info", name)["info"][name])

    def state(self, name: str) -> str:
        return str(self.json("info", "--no-runtime-information", name)["info"][name]["state"])

    def codes(self, name: str) -> set[str]:
        """The instance's inconsistency codes (nothing asked of the guest: a guest busy or
        paused cannot make the answer late)."""
        doc = self.json("info", "--no-runtime-information", name)["info"][name]
        return {i["code"] for i in doc["inconsistencies"]}

    def exec(self, name: str, *cmd: str) -> str:
        return self.run("exec", name, "--", *cmd).stdout

    def end_ssh_master(self, name: str) -> None:
        """End the instance's SSH master (host/ssh/master.py), so the next session makes a
        new connection: one that authenticates again and checks the pinned host key again
        (sessions on a master ride on the connection made, and verified, before)."""
        pid = procs.read_pidfile(self.root / "instances" / name / "ssh-mux.pid")
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while procs.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def boot_id(self, name: str) -> str:
        return self.exec(name, "cat", "/proc/sys/kernel/random/boot_id").strip()

    def ensure_running(self, name: str) -> None:
        if self.state(name) != "Running":
            self.run("stop", "--force", name)
            self.run("start", name)
        assert self.state(name) == "Running"

    def disk(self, name: str) -> Path:
        return self.root / "instances" / name / "disk.qcow2"

    def tags(self, name: str) -> list[str]:
        out = subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(self.disk(name))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [s["name"] for s in json.loads(out).get("snapshots", [])]

    def qemu_pid(self, name: str) -> int | None:
        return procs.read_pidfile(self.root / "instances" / name / "qemu.pid")

    def daemon_pid(self) -> int | None:
        pid = procs.read_pidfile(self.root / "ketchd.pid")
        return pid if pid and procs.alive(pid) else None

    def kill_daemon(self, sig: int = signal.SIGKILL) -> None:
        pid = self.daemon_pid()
        if pid:
            os.kill(pid, sig)
            deadline = time.monotonic() + 30
            while procs.alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    def teardown(self) -> None:
        """Purge every instance, stop the daemon, and end any QEMU left on this root."""
        try:
            self.run("delete", "--all", "--purge", timeout=300, check=False)
        finally:
            self.kill_daemon(signal.SIGTERM)
            for path in (self.root / "instances").glob("*/qemu.pid"):
                pid = procs.read_pidfile(path)
                if pid and procs.alive(pid):
                    procs.terminate(pid)
