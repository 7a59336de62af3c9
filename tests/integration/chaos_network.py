"""The chaos walk on the managed network, inside a network namespace the walk makes.

:class:`NetWalk` is :class:`chaos.Walk` with every ``ketch`` command (so
ketchd, dnsmasq and QEMU) run in ``kchaosnet-<hex>`` (``ip netns exec``),
``local.network=managed``, and two faults of its own, injected with five of
``chaos.py``'s (:data:`BASE_FAULTS`: kill-qemu, kill-daemon, kill-daemon-mid-op,
kill-forward-watcher, host-reboot):

==================  ==================================================================
fault               what is done
==================  ==================================================================
kill-dnsmasq        ``kill -9`` of the managed network's dnsmasq (the pid from the
                    root's ``network/dnsmasq.pid``, its command line checked); the next
                    start or ``doctor --fix`` makes it again
delete-tap          ``ip link del`` of a running instance's TAP (from its ``nic.json``):
                    its guest is cut off the managed network; ``ketch exec`` must still
                    work (the SSH endpoint falls back to the loopback port) and the next
                    start makes the TAP again
==================  ==================================================================

and its simulated host reboot also takes the network down (dnsmasq, the bridge
and the TAPs gone, as after a real one).  The walk's invariants are
``chaos.py``'s; the namespace is removed at the end, on failure too, and
nothing of the network is ever in the machine's own namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaos import FAULT_WEIGHTS, FAULTS, Config, Walk, alive, read_pid

NET_FAULTS = ("kill-dnsmasq", "delete-tap")
# With the network's own faults, those of chaos.py that touch what the network keeps across
# them (a QEMU, ketchd, the forward watcher, a reboot); the others are chaos.py's walks'.
BASE_FAULTS = ("kill-qemu", "kill-daemon", "kill-daemon-mid-op", "kill-forward-watcher",
               "host-reboot")  # fmt: skip
_WEIGHT = dict(zip(FAULTS, FAULT_WEIGHTS, strict=True))


class NetWalk(Walk):
    """A walk whose ketchd, dnsmasq and QEMUs live in a network namespace of its own."""

    fault_classes = (*NET_FAULTS, *BASE_FAULTS)
    fault_weights = (12, 12, *(_WEIGHT[f] for f in BASE_FAULTS))

    def __init__(
        self, config: Config, image_dir: Path, *, log: Callable[[str], None] | None = None
    ) -> None:
        super().__init__(config, image_dir, log=log)
        self.ns = f"kchaosnet-{secrets.token_hex(4)}"

    # -- the namespace ----------------------------------------------------------------------

    def _argv(self, args: tuple[str, ...]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, sys.executable, "-m", "ketch.cli.main", *args]

    def ns_run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def setup(self) -> None:
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True)
        super().setup()
        self.env["KETCH_NETWORK_DEFAULT"] = "managed"
        res = self.cli("set", "local.network=managed", kind="set")
        if res.rc != 0:
            raise RuntimeError(f"ketch set local.network=managed failed: {res.stderr}")
        self.log(f"network namespace {self.ns}, local.network=managed")

    def teardown(self) -> None:
        try:
            if self.root is not None:
                pid = self.dnsmasq_pid()
                super().teardown()  # purging the last instance takes the network down
                if pid is not None and alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        finally:
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False)

    # -- the network's pieces -----------------------------------------------------------------

    def dnsmasq_pid(self) -> int | None:
        """This root's dnsmasq (its command line names the root's lease file), if it runs."""
        assert self.root is not None
        pid = read_pid(self.root / "network" / "dnsmasq.pid")
        if pid is None or not alive(pid):
            return None
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        leases = f"--dhcp-leasefile={self.root}/network/dnsmasq.leases".encode()
        return pid if leases in argv else None

    def tap_of(self, name: str) -> str | None:
        try:
            data: dict[str, Any] = json.loads((self.idir(name) / "nic.json").read_text())
        except (OSError, ValueError):
            return None
        tap = data.get("tap")
        return tap if isinstance(tap, str) else None

    def links(self) -> list[dict[str, Any]]:
        out = self.ns_run("ip", "-j", "link", "show").stdout
        try:
            return list(json.loads(out or "[]"))
        except ValueError:
            return []

    # -- faults ---------------------------------------------------------------------------------

    def do_fault(self, fault: str) -> bool:
        if fault == "kill-dnsmasq":
            pid = self.dnsmasq_pid()
            if pid is None:
                return False
            os.kill(pid, signal.SIGKILL)
            self.wait_gone(pid)
            self.log(f"FAULT kill -9 dnsmasq (pid {pid})")
            return True
        if fault == "delete-tap":
            return self.fault_delete_tap()
        return super().do_fault(fault)

    def fault_delete_tap(self) -> bool:
        present = {d.get("ifname") for d in self.links()}
        taps = {n: self.tap_of(n) for n in sorted(self.instances) if self.qemu_running(n)}
        have = [n for n, tap in taps.items() if tap in present]
        if not have:
            return False
        name = self.rng.choice(have)
        tap = taps[name]
        assert tap is not None
        self.ns_run("ip", "link", "del", tap)
        self.log(f"FAULT deleted the TAP {tap} of running {name}")
        if self.states.get(name) == "Running":
            res = self.cli("exec", name, "--", "true", kind="exec")
            self.check_clear(res)
            if res.rc != 0:
                self.violate(
                    "exec-without-tap",
                    f"exec in {name} without its TAP: exit {res.rc}: {res.first_error_line()}",
                    res.command,
                )
        return True

    def fault_reboot(self, qemus: dict[str, list[int]]) -> bool:
        if not qemus or self.filler is not None:
            return False
        pid = self.dnsmasq_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self.wait_gone(pid)
        for link in self.links():  # what a reboot does not keep: the bridge and the TAPs
            if link.get("ifname") != "lo":
                self.ns_run("ip", "link", "del", str(link.get("ifname")))
        self.log("FAULT (reboot) the managed network is gone: dnsmasq, bridge, TAPs")
        return super().fault_reboot(qemus)


def run_net_walk(
    config: Config, image_dir: Path, *, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run one walk on the managed network in a namespace (root only) and return its summary."""
    return NetWalk(config, image_dir, log=log).run()
