"""The daemon's side of reaching guests: keys, pinned host keys, readiness, master, endpoint.

An instance on the managed network is reached at its own address, port 22
(:func:`endpoint`), when its TAP is attached, its guest took the lease and a
TCP connection there succeeds now; else, and
always for the daemon's own SSH (:func:`target`), through user-mode
networking's forwarded loopback port, which works whatever the guest did
with its managed NIC.  The managed address is a direct connection: the
master rides on the loopback port.

Each running instance has one multiplexed SSH connection (``host/ssh/master.py``):
made by the readiness wait once the guest answers, kept by the forward watcher
(made again when it is gone: killed, or its QEMU restarted), ended by stop,
suspend, delete and purge.  :func:`target` names its socket only while
:meth:`~ketch.host.ssh.master.Master.live` says it is the one ketchd made.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ketch.host import dnsmasq, procs, ssh, tcp
from ketch.host.ssh import master
from ketch.layout import InstanceDir, Root
from ketch.model import InstanceSpec, PidStatus
from ketch.progress import Reporter
from ketch.runtime.driver import Driver
from ketch.runtime.netplan import read_nic
from ketch.service.waits import Wait
from ketch.sshtarget import SshTarget
from ketch.store.mirror import atomic_write
from ketch.vocabulary import blocks_readiness

if TYPE_CHECKING:
    from ketch.host.run import Completed

#: Seconds before a master that failed to start is tried again by :func:`ensure_master`.
MASTER_RETRY = 5.0

# The masters this ketchd started, by control socket path (one ketchd per storage root).
_masters: dict[Path, master.Master] = {}
_locks: dict[Path, asyncio.Lock] = {}
_failed: dict[Path, float] = {}


def client_public_key(root: Root) -> str:
    """The storage root's client key (created on first use), public half."""
    root.client_key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return ssh.generate_keypair(root.client_key, "ketch")


def make_host_key(idir: InstanceDir, name: str) -> tuple[str, str]:
    """Generate the instance's host key, pin it; returns (private, public) texts."""
    public = ssh.generate_keypair(idir.host_key, f"ketch-host-{name}")
    ssh.write_known_hosts(idir.known_hosts, name, public)
    return idir.host_key.read_text(), public


def target(root: Root, spec: InstanceSpec, *, mux: bool = True) -> SshTarget:
    """How to reach the instance; through its master's socket when it is up (and ``mux``)."""
    idir = root.instance(spec.name)
    return SshTarget(
        name=spec.name,
        host="127.0.0.1",
        port=spec.ssh_port,
        user=spec.user,
        identity=str(root.client_key),
        known_hosts=str(idir.known_hosts),
        control_path=live_control(idir) if mux else "",
    )


PROBE_TIMEOUT = 3.0  # seconds: a bound for a loaded host; only tried when it should answer
UNREACHABLE_FOR = 30.0  # seconds an address that did not answer is not tried again
SYS_NET = Path("/sys/class/net")
_unreachable: dict[tuple[str, str], float] = {}  # (instance, address) -> when it failed


async def reachable(address: str, port: int = 22, timeout: float = PROBE_TIMEOUT) -> bool:
    """Does a TCP connection to ``address:port`` succeed within ``timeout``?"""
    return await tcp.reachable(address, port, timeout)


def attached(tap: str, sys_net: Path = SYS_NET) -> bool:
    """Is the TAP there, on a bridge, with its QEMU holding it (carrier)?"""
    try:
        on_bridge = (sys_net / tap / "master").exists()
        return on_bridge and (sys_net / tap / "carrier").read_text().strip() == "1"
    except OSError:
        return False


def leased(root: Root, mac: str, address: str) -> bool:
    """Did the guest take its address from dnsmasq (so it configured that NIC)?"""
    try:
        text = root.network.leases.read_text()
    except OSError:
        return False
    return any(le.mac == mac and le.ip == address for le in dnsmasq.parse_leases(text))


async def endpoint(root: Root, spec: InstanceSpec) -> SshTarget:
    """The SSH endpoint a client is given: the managed address when it is reachable.

    Reachable: the instance's managed NIC (``nic.json``) has its TAP attached,
    the guest took its lease, and a TCP connection to port 22 succeeds now.
    An address that did not answer is not tried again for
    :data:`UNREACHABLE_FOR` seconds; the loopback port is used meanwhile.
    """
    loopback = target(root, spec)
    nic = read_nic(root.instance(spec.name))
    if nic is None or not attached(nic.tap) or not leased(root, nic.mac, nic.ip):
        return loopback
    key = (spec.name, nic.ip)
    failed = _unreachable.get(key)
    if failed is not None and time.monotonic() - failed < UNREACHABLE_FOR:
        return loopback
    if not await reachable(nic.ip):
        _unreachable[key] = time.monotonic()
        return loopback
    _unreachable.pop(key, None)
    # A direct connection: the master rides on the loopback port (made by the readiness wait)
    return loopback.replace(host=nic.ip, port=22, control_path="")


def live_control(idir: InstanceDir) -> str:
    """The instance's control socket if the master ketchd made is on it, else ""."""
    m = _masters.get(idir.ssh_mux_socket)
    return str(m.control) if m is not None and m.live() else ""


def _lock(path: Path) -> asyncio.Lock:
    return _locks.setdefault(path, asyncio.Lock())


async def ensure_master(
    root: Root, spec: InstanceSpec, *, timeout: float = master.START_TIMEOUT, retry: bool = False
) -> SshTarget | Completed:
    """Make the instance's master unless it is up; the target through it, or how it failed.

    A master that is gone, or whose socket is not the one it made (a planted
    or stale file), is ended and made again.  After a failure the next try
    waits :data:`MASTER_RETRY` seconds (unless ``retry``): meanwhile the
    plain target (no control path) is returned.  A storage root too deep for
    a socket path gets no master: the plain target.
    """
    idir = root.instance(spec.name)
    path = idir.ssh_mux_socket
    plain = target(root, spec, mux=False)
    if not master.fits(path):
        return plain
    async with _lock(path):
        have = _masters.get(path)
        if have is None and (adopted := await master.adopt(path, idir.ssh_mux_pidfile)):
            _masters[path] = have = adopted  # an earlier ketchd's: its sessions go on
        if have is not None and have.live():
            return target(root, spec)
        if not retry and time.monotonic() - _failed.get(path, -MASTER_RETRY) < MASTER_RETRY:
            return plain
        await _end(idir)
        made = await master.start(
            plain, path, idir.ssh_mux_pidfile, idir.ssh_mux_log, timeout=timeout
        )
        if isinstance(made, master.Master):
            _masters[path] = made
            _failed.pop(path, None)
            return target(root, spec)
        _failed[path] = time.monotonic()
        return made


async def end_master(root: Root, name: str) -> None:
    """End the instance's master, if any (ours or an earlier ketchd's); never raises."""
    idir = root.instance(name)
    async with _lock(idir.ssh_mux_socket):
        await _end(idir)
        _failed.pop(idir.ssh_mux_socket, None)


async def _end(idir: InstanceDir) -> None:
    import logging

    try:
        have = _masters.pop(idir.ssh_mux_socket, None)
        if have is not None:
            await have.stop()
        if idir.ssh_mux_pidfile.exists() or idir.ssh_mux_socket.exists():
            await asyncio.to_thread(master.end_stray, idir.ssh_mux_socket, idir.ssh_mux_pidfile)
    except OSError as exc:
        logging.getLogger("ketchd").warning("ending the ssh master of %s: %s", idir.path, exc)


async def wait_ready(
    root: Root,
    spec: InstanceSpec,
    *,
    timeout: float,
    reporter: Reporter,
    driver: Driver | None = None,
    finished: bool = False,
) -> None:
    """Wait for SSH and boot-finished; with ``driver``, stop early if QEMU dies or pauses.

    ``finished``: the guest already said boot-finished is there (a warm clone's
    agent), or it is a saved state that had (:func:`resumes_ready`): SSH with the
    pinned key is all that is waited for.  Once ready, the instance directory's
    :data:`~ketch.layout.READY` marker names this QEMU run.

    The daemon may cut this wait short (``service/waits.py``): then
    :class:`~ketch.service.waits.WaitCancelled` is raised.
    """

    async def abort() -> str | None:
        assert driver is not None
        obs = await driver.observe(spec, root.instance(spec.name), probe_qmp=True)
        if obs.pid_status is not PidStatus.OURS:
            return "its QEMU is no longer running (see its qemu.log and serial.log)"
        if blocks_readiness(obs.qmp_status):
            return f"QEMU reports the guest as '{obs.qmp_status}'"
        return None

    async def connect(left: float) -> SshTarget | Completed:
        # A failed master is this probe's answer; for MASTER_RETRY seconds after it the
        # probes go direct, so a guest reachable without a master is found either way.
        return await ensure_master(root, spec, timeout=left)

    idir = root.instance(spec.name)
    await end_master(root, spec.name)  # a master of an earlier run of this instance
    idir.ready.unlink(missing_ok=True)  # not ready until seen so, in this run
    async with Wait(spec.name, "readiness"):
        await ssh.wait_ready(
            target(root, spec, mux=False),
            timeout=timeout,
            reporter=reporter,
            abort=abort if driver is not None else None,
            connect=connect,
            finished=finished,
        )
    run = _run_of(idir)
    if run is not None:
        atomic_write(idir.ready, run.encode())


# -- readiness, remembered across a suspend --------------------------------------------
# The READY marker holds "run PID STARTTIME" (the QEMU run that was seen ready) or SAVED
# (the suspend tag holds a state saved after readiness).  Lost or stale, it costs only
# the boot-finished probe: a resume without SAVED waits as a boot does.

SAVED = "saved"


def _run_of(idir: InstanceDir) -> str | None:
    """The instance's QEMU run now, as ``run PID STARTTIME`` (pid file, /proc); None if none."""
    pid = procs.read_pidfile(idir.pidfile)
    started = procs.start_time(pid) if pid is not None else None
    return None if started is None else f"run {pid} {started}"


def _marked(idir: InstanceDir) -> str | None:
    try:
        return idir.ready.read_text()
    except OSError:
        return None


def ready_now(idir: InstanceDir) -> bool:
    """Before a suspend: was this QEMU run seen ready (its boot finished)?"""
    run = _run_of(idir)
    return run is not None and _marked(idir) == run


def mark_saved(idir: InstanceDir, ready: bool) -> None:
    """After a suspend: the saved state is of a guest that was ready (``ready``), or not."""
    if ready:
        atomic_write(idir.ready, SAVED.encode())
    else:
        idir.ready.unlink(missing_ok=True)


def resumes_ready(idir: InstanceDir) -> bool:
    """Does the suspend tag hold a guest that had finished booting?"""
    return _marked(idir) == SAVED


def port_free(port: int) -> bool:
    """Can QEMU listen on this loopback port?  (Like QEMU, SO_REUSEADDR: connections
    of a previous run in TIME_WAIT do not make the port "taken".)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(taken: set[int]) -> int:
    """A loopback TCP port that nothing listens on and no instance holds."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port
    raise OSError("no free loopback port")


def remove_tree(path: Path) -> str | None:
    """Remove a directory tree; returns an error text instead of raising."""
    import shutil

    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return str(exc)
    return None
