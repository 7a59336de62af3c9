"""Two hosts, local QEMU and a libvirtd (issue 20): placement, ``list`` of both, a host
that stops answering, and a ``stop --force`` queued until it answers again.

On a libvirtd of the module's own (:func:`libvirtd.ketch_on_libvirtd`: QEMU as root, no security
driver, private definitions, a pool) and a ketchd on a root of its own
with the tiny image, through the real CLI:

- ``launch`` without ``--host`` goes where the most free memory is, by the figures the
  daemon used (its log has them; they are ``host list``'s: the same totals), and says so;
  the other instance is launched with ``--host`` on the other host;
- ``list`` shows both, with a Host column in the table and ``host`` keys in JSON;
- libvirtd frozen (SIGSTOP: its socket takes the connection, nothing answers): only its
  instance is Unknown with ``host-unreachable``, the local one stays Running, and ``list``
  answers within the observation's bound of its time with both answering;
- libvirtd ended: ``stop --force`` of its instance is queued and says so (exit 2), a ketchd
  killed and started again still has it, and it runs once libvirtd is back.

Traffic stays on loopback (user networking; the guest's SSH on 127.0.0.1).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ketchcli import Ketch
from libvirtd import LIBVIRTD, Libvirtd, ketch_on_libvirtd, virsh

from ketch.model import ImageInfo
from ketch.runtime.libvirt_host import OBSERVE_TIMEOUT

PLACED, FORCED = "placed", "forced"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path(LIBVIRTD).exists(),
    reason="needs root and libvirtd (libvirt-daemon-system)",
)


class Env:
    def __init__(self, k: Ketch, lv: Libvirtd) -> None:
        self.k, self.lv = k, lv
        self.hosts: dict[str, str] = {}  # instance -> its host

    def on(self, host: str) -> str:
        (name,) = [n for n, h in self.hosts.items() if h == host]
        return name

    def timed_list(self) -> tuple[float, list[dict[str, object]]]:
        started = time.monotonic()
        entries = self.k.json("list")["list"]
        return time.monotonic() - started, entries


@pytest.fixture(scope="module")
def env(tiny_image: ImageInfo) -> Iterator[Env]:
    with ketch_on_libvirtd(tiny_image, "ketch-two-") as (k, _, lv):
        k.run("host", "add", "lv", "qemu:///system")
        yield Env(k, lv)


_USED = re.compile(r"placement of (\S+): (.*) -> (\S+)$")
_FACT = re.compile(r"(\S+) free=(\d+|None) total=(\d+|None)")


def _facts_used(root: Path, name: str) -> tuple[dict[str, tuple[int, int]], str]:
    """What the daemon's placement of ``name`` saw, host by host, and what it chose."""
    for line in reversed((root / "ketchd.log").read_text().splitlines()):
        found = _USED.search(line)
        if found and found.group(1) == name:
            facts = {
                h: (int(free), int(total))
                for h, free, total in _FACT.findall(found.group(2))
                if free != "None"
            }
            return facts, found.group(3)
    raise AssertionError(f"ketchd.log has no placement of {name}")


def test_launch_goes_where_the_most_free_memory_is_and_says_so(env: Env) -> None:
    rows = {r["name"]: r for r in env.k.json("host", "list")["list"]}
    assert {n: r["state"] for n, r in rows.items()} == {"local": "reachable", "lv": "reachable"}
    assert rows["lv"]["arch"] == rows["local"]["arch"]  # one machine: the image's architecture
    done = env.k.run("launch", "tiny", "--name", PLACED, "--memory", "256M", timeout=900)
    facts, chosen = _facts_used(env.k.root, PLACED)
    assert set(facts) == {"local", "lv"}, facts
    # the same figures host list shows: its totals are the placement's, host by host
    assert {h: total for h, (_, total) in facts.items()} == {
        h: rows[h]["memory_total"] for h in facts
    }
    best = max(facts, key=lambda h: (facts[h][0], h == "local"))  # a tie goes to local
    assert chosen == best, (facts, chosen)
    assert f'Placing {PLACED} on host "{chosen}" (the most free memory' in done.stderr + done.stdout
    other = "lv" if chosen == "local" else "local"
    assert f"not on {other}: " in done.stderr + done.stdout
    env.k.run("launch", "tiny", "--name", FORCED, "--memory", "256M", "--host", other, timeout=900)
    env.hosts = {PLACED: chosen, FORCED: other}
    assert env.k.info(PLACED)["host"] == chosen and env.k.info(FORCED)["host"] == other


def test_list_shows_both_hosts(env: Env) -> None:
    entries = {e["name"]: e for e in env.k.json("list")["list"]}
    assert {n: (e["host"], e["state"]) for n, e in entries.items()} == {
        n: (h, "Running") for n, h in env.hosts.items()
    }
    lines = env.k.run("list").stdout.splitlines()
    assert lines[0].split() == ["Name", "State", "IPv4", "Image", "Host"], lines
    assert {ln.split()[0]: ln.split()[-1] for ln in lines[1:]} == env.hosts


def test_a_frozen_libvirtd_makes_only_its_instance_unknown_and_list_stays_fast(
    env: Env,
) -> None:
    baseline = min(env.timed_list()[0] for _ in range(3))  # both hosts answering
    lvname, local = env.on("lv"), env.on("local")
    pid = int(env.lv.pidfile.read_text().split()[0])
    os.kill(pid, signal.SIGSTOP)  # its socket takes connections; nothing answers
    try:
        took, entries = env.timed_list()
        states = {e["name"]: e["state"] for e in entries}
        assert states == {lvname: "Unknown", local: "Running"}, states
        # the observation's deadline and no more (twice, for whatever else the machine does)
        assert took < 2 * (baseline + OBSERVE_TIMEOUT), (took, baseline)
        doc = env.k.json("info", "--no-runtime-information", lvname)["info"][lvname]
        (inc,) = doc["inconsistencies"]
        assert inc["code"] == "host-unreachable", inc
        assert inc["message"] == (
            f'host "lv" could not be asked: did not answer within {OBSERVE_TIMEOUT:g} s'
        )
        assert env.k.codes(local) == set()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert env.k.state(lvname) == "Running"  # it answers again


def test_stop_force_of_an_unreachable_host_is_queued_and_runs_once_it_answers(
    env: Env,
) -> None:
    lvname, local = env.on("lv"), env.on("local")
    env.lv.stop()  # its domain's QEMU runs on; a libvirtd started again takes it back
    try:
        done = env.k.run("stop", "--force", lvname, check=False)
        assert done.returncode == 2, done
        assert (
            f"host lv is unreachable: stop --force of {lvname} is queued; "
            "it runs when the host answers"
        ) in done.stderr, done.stderr
        env.k.kill_daemon()  # a ketchd started again still has it
        doc = env.k.json("info", "--no-runtime-information", lvname)["info"][lvname]
        assert doc["state"] == "Unknown"
        assert doc["inconsistencies"][0]["action"].startswith("'stop --force' is queued")
        assert env.k.state(local) == "Running"
    finally:
        env.lv.start()
    deadline = time.monotonic() + 120
    while env.k.state(lvname) != "Stopped" and time.monotonic() < deadline:
        time.sleep(1)
    assert env.k.state(lvname) == "Stopped"
    assert "shut off" in virsh("domstate", f"ketch-{lvname}").stdout
    assert env.k.codes(lvname) == set() and env.k.state(local) == "Running"
    log = (env.k.root / "ketchd.log").read_text()
    assert f"the host of {lvname} answers: its queued force-stop runs" in log
