"""The chaos engine: a seeded random walk of ketch operations and faults over real VMs.

Shared by ``tests/integration/test_chaos.py`` (short walks in CI) and
``bench/chaos.py`` (long runs whose numbers go into ``docs/reliability.md``).

One walk owns one fresh storage root on a tmpfs it mounts (so the disk can be
filled on purpose), with the tiny image copied into the vault.  Every choice
comes from ``random.Random(seed)`` and every step is logged with the seed, so a
failing walk can be replayed with the command in its summary's ``replay``
field (``python bench/chaos.py --seed S --steps N --vms V ...``).  The
choices are the same; the walk's next choice depends on what it observes
(which instances run, which disks hold a tag) and the timing of a mid-operation
daemon kill is not exact, so a replay retraces the walk closely, not always
exactly.

Each step is either an operation (launch, start, stop, stop --force, suspend,
restart, exec, delete, recover, and now and then delete --purge), run on a
random instance whatever its state, or a fault:

==================  ==================================================================
fault               what is done
==================  ==================================================================
kill-qemu           ``kill -9`` of an instance's QEMU (the pid from its qemu.pid)
kill-daemon         ``kill -9`` of ketchd between commands (the next call restarts it)
kill-daemon-mid-op  ``kill -9`` of ketchd while an operation runs (a random delay
                    after the command started)
tag-remove          ``qemu-img snapshot -d suspend`` on a disk no QEMU holds
tag-add             ``qemu-img snapshot -c suspend`` on a disk no QEMU holds
foreign-pid         the pid file of an instance whose QEMU is not running names a live
                    ``sleep`` the walk started (a pid reused after a crash)
qmp-socket          the QMP socket of a running instance is deleted
kill-forward-      ``kill -9`` of the ``ssh`` of one instance's port-forward watcher; a new
watcher             one must follow within 60 s (the forwards stay in QEMU meanwhile)
disk-full           the tmpfs is filled with a file leaving 0, 2 or 8 MiB; the next step
                    runs against the full disk (a suspend when something runs, 60 %;
                    never a boot unless ``boot_on_full_disk``: see :data:`BOOTING`)
                    and the file is removed after it
freeze-qemu         ``kill -STOP`` of a running QEMU; ``list`` must answer and show it
                    ``Unknown`` (``qmp-unresponsive``); then ``kill -CONT`` and the walk
                    waits (≤ 60 s) until it is listed ``Running`` again
damage-db           ketchd is ended (SIGTERM) and ``ketch.db`` gets 7 bytes of garbage at
                    offset 100, is truncated to half, or is deleted (:data:`DB_DAMAGES`);
                    the next command's daemon must rebuild it losing no instance (never
                    on a full disk: there a new database cannot be made, and ketchd
                    refuses to start with exit 2 saying so, nothing lost)
host-reboot         a simulated host reboot: ``kill -9`` of ketchd and of every QEMU, and
                    another boot id in the root's ``boot_id``; the next daemon starts
                    again what was running (the walk waits until nothing is
                    ``Starting``, ≤ 300 s); suspended instances stay suspended
base-image-away     the cached base image of the instances' disks is moved aside and back
                    (:mod:`chaos_images`: what must hold meanwhile and after)
kill-download       a download of an image from a loopback remote is cut off half-way,
                    by ``kill -9`` of ketchd or by the server (:mod:`chaos_images`)
==================  ==================================================================

The mount faults (``kill-mount-host``, ``mount-source-gone``,
``suspend-with-mounts``; about half the launches get a classic mount) and
the mount invariants are in ``chaos_mounts.py``.

Most operations are ones the target's current state accepts (75 %), the rest
any operation; fault classes not injected yet are preferred, so even a short
walk sees most of them.

Invariants (a broken one is a *violation*, recorded with seed and step):

* every command succeeds or fails with a documented exit code (0, 1, 2, 3, 5;
  ``exec`` may pass the guest's own code through) and, when it fails, a
  message on stderr that is not a Python traceback nor an "internal error";
* ``stop --force`` and ``delete --purge`` exit 0 whenever they are called
  (except the one command a ``kill-daemon-mid-op`` cut off: it exits 3);
* a command that succeeds did what it says (start → Running, stop →
  Stopped, suspend → Suspended, delete → Deleted, purge → gone ...);
* ``ketch list --format json`` works after every step and lists every
  instance launched and not purged, and nothing else;
* a process the walk started (the ``sleep`` behind a foreign pid) is never
  signalled;
* every few steps and at the end, after ``ketch doctor --fix``: ``ketch
  doctor`` finds nothing but :data:`ACCEPTED_FINDINGS`, ``ketch info`` shows
  no inconsistency but ``quarantined``, every instance is in a stable state,
  and what ketch says matches what is there (a QEMU runs exactly for the
  Running instances, a Suspended disk holds a ``suspend`` tag with VM state,
  a Stopped one holds none);
* the canary (``/home/ubuntu/canary``, written and synced right after
  launch) reads back intact every time the guest runs, and at the end every
  instance that is not quarantined starts and still has it.

Violations that match a known, open ketch bug are labelled with its id
(:data:`KNOWN_BUGS`, with a strict xfail test in ``test_chaos.py``); the
rest are *unknown* and fail the test.  Known bugs seen acting without
breaking an invariant (doctor ending a guest the full disk paused) are
counted under ``observations``.

Everything the walk signals or removes is its own: QEMU processes whose
command line names a disk under its root, the daemon whose pid is in its
root's ``ketchd.pid``, the ``sleep`` processes it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import chaos_images
import chaos_mounts
import chaos_warm
import db_damage

from ketch.model import InconsistencyCode

DOCUMENTED_EXIT_CODES = frozenset({0, 1, 2, 3, 5})
STABLE_STATES = frozenset({"Running", "Stopped", "Suspended", "Deleted"})
MEMORY = "256M"  # the guest's RAM; a suspended tiny guest's state is about 95 MiB
TMPFS_SIZE = "600M"
CANARY = "/home/ubuntu/canary"
COMMAND_TIMEOUT = 420.0  # a command still running after this long is a hang
WATCHER_BACK = 60  # seconds ketchd may take to start a killed forward watcher again
# What `info` says of a guest that cannot get ready by itself (a boot waiting for it is futile).
NOT_RUNNING_GUEST = frozenset(
    {InconsistencyCode.GUEST_HALTED, InconsistencyCode.PAUSED, InconsistencyCode.PAUSED_IO_ERROR}
)

# What `ketch doctor` may still report after `ketch doctor --fix`: findings
# documented as not repairable automatically.  (A quarantined instance is
# accepted too: doctor reports nothing more about it; the walk lists every
# quarantine it saw.)
ACCEPTED_FINDINGS: dict[str, str] = {
    "stray-directory": "a directory without record or disk: ketch never removes what it did "
    "not make",
    "orphan-qemu": "a QEMU whose directory is gone: ketch never ends a process it does not manage",
}

# Ketch bugs the walks found, by id, while they are open: a violation that
# matches one is labelled, not failed.  All seven found on 2026-11-26 are fixed
# (their tests in test_chaos.py are plain regression tests now), so a match is
# a regression and fails like any other violation.
KNOWN_BUGS: dict[str, str] = {}


# ---- records ----------------------------------------------------------------------


@dataclass
class Violation:
    seed: int
    step: int
    invariant: str
    detail: str
    command: str = ""
    known: str | None = None

    def __str__(self) -> str:
        tag = f" [known: {self.known}]" if self.known else ""
        cmd = f" ({self.command})" if self.command else ""
        return f"seed={self.seed} step={self.step} {self.invariant}{cmd}: {self.detail}{tag}"


@dataclass
class Result:
    args: list[str]
    rc: int | None  # None: timed out (killed)
    stdout: str
    stderr: str
    seconds: float

    @property
    def command(self) -> str:
        return "ketch " + " ".join(self.args)

    def first_error_line(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        failed = [ln for ln in lines if " failed: " in ln]
        return (failed or lines or [""])[0][:200]


@dataclass
class Inst:
    """What the walk knows about one instance it launched."""

    name: str
    canary: str | None = None  # the content written and synced, once it was
    quarantine: str | None = None


def _target_of(args: list[str]) -> str | None:
    """The instance a ``ketch`` command line names (launch: its --name)."""
    if args and args[0] == "launch":
        return args[args.index("--name") + 1] if "--name" in args else None
    rest = [a for a in args[1:] if not a.startswith("-")]
    return rest[0] if rest else None


# ---- host helpers (all limited to this walk's own root and processes) ----------


def qemu_processes(root: Path) -> dict[str, list[int]]:
    """Instance name -> pids of QEMU processes whose disk lies under ``root``/instances."""
    prefix = f"filename={root}/instances/"
    found: dict[str, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]
        if not argv or "qemu-system" not in Path(argv[0]).name:
            continue
        for arg in argv:
            if prefix in arg and "/disk.qcow2" in arg:
                name = arg.split(prefix, 1)[1].split("/", 1)[0]
                found[name].append(int(entry.name))
                break
    return dict(found)


def forward_watchers(root: Path, parent: int | None = None) -> dict[str, int]:
    """Instance name -> pid of the ``ssh`` its port-forward watcher runs (this root's only;
    with ``parent``, only that ketchd's children)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent is not None and ppid != parent:
            continue
        if not argv or Path(argv[0].decode(errors="replace")).name != "ssh":
            continue
        if not any(b"@ketch-listeners" in a for a in argv):
            continue
        for a in argv:
            text = a.decode(errors="replace")
            prefix = f"UserKnownHostsFile={root}/instances/"
            if text.startswith(prefix):
                found[text[len(prefix) :].split("/")[0]] = int(entry.name)
    return found


def gone(pid: int, within: float = 10.0) -> bool:
    """Does process ``pid`` end within ``within`` seconds?"""
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def alive(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def snapshots(disk: Path) -> list[dict[str, Any]] | None:
    """The qcow2's internal snapshots (``qemu-img info -U``), None if unreadable."""
    done = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(disk)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        return None
    return list(json.loads(done.stdout).get("snapshots", []))


def port_only_time_wait(port: int) -> bool:
    """True when every TCP socket on local port ``port`` is in TIME_WAIT (and there is one)."""
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port:
                    states.append(cols[3])
    return bool(states) and all(s == "06" for s in states)


def mount_tmpfs(size: str = TMPFS_SIZE, prefix: str = "kchaos-") -> Path:
    """A fresh directory under /tmp (short: Unix sockets live in it) with a tmpfs on it."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    # mode=0700: a tmpfs root is 1777, which ketchd refuses as a storage root.
    opts = f"size={size},mode=0700"
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(root)], check=True)
    return root


def seed_vault(root: Path, image_dir: Path) -> None:
    """Copy the built tiny image where the daemon looks (hard links cannot cross filesystems)."""
    dst = root / "vault" / "built" / "tiny" / image_dir.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(image_dir, dst)


# ---- the walk ---------------------------------------------------------------------------


@dataclass
class Config:
    seed: int
    steps: int = 25
    vms: int = 2
    doctor_every: int = 8
    fault_rate: float = 0.4
    memory: str = MEMORY
    tmpfs_size: str = TMPFS_SIZE
    boot_on_full_disk: bool = False  # see BOOTING
    faults: tuple[str, ...] = ()  # only these fault classes (default: every one in FAULTS)
    warm: bool = False  # launches start warm from a template, and its faults join (chaos_warm)


OPS = (
    "launch",
    "start",
    "stop",
    "stop --force",
    "suspend",
    "restart",
    "exec",
    "delete",
    "recover",
    "delete --purge",
)
OP_WEIGHTS = (0, 14, 10, 8, 12, 6, 14, 5, 5, 2)  # launch: when fewer than `vms` exist
# Operations a state accepts (most steps pick one of these, the rest any operation).
VALID_OPS: dict[str, tuple[str, ...]] = {
    "Running": ("stop", "stop --force", "suspend", "suspend", "restart", "exec", "exec", "delete"),
    "Stopped": ("start", "start", "restart", "exec", "stop --force", "delete"),
    "Suspended": ("start", "start", "exec", "stop --force", "delete"),
    "Deleted": ("recover", "recover", "delete --purge"),
    "Unknown": ("stop --force", "start", "delete --purge"),
}
# Operations that boot a guest (exec starts a stopped instance, as Multipass does).
# A guest booted on a full disk pauses at its first write (QEMU's werror=enospc)
# and the boot waits its whole timeout (known bugs io-error-is-not-halted and
# wait-ready-blind): with `boot_on_full_disk` off, the step after a disk-full
# fault picks another operation instead.
BOOTING = ("launch", "start", "restart", "exec")
NOT_BOOTING = ("stop", "stop --force", "suspend", "delete", "recover", "delete --purge")
# Typical seconds an operation takes here: a mid-operation daemon kill waits a
# random fraction of it.
TYPICAL_SECONDS = {
    "launch": 8.0,
    "start": 8.0,
    "restart": 11.0,
    "stop": 3.0,
    "suspend": 0.6,
    "stop --force": 0.3,
    "delete": 3.0,
    "delete --purge": 0.3,
}
FAULTS = (
    "kill-qemu",
    "kill-daemon",
    "kill-daemon-mid-op",
    "tag-remove",
    "tag-add",
    "foreign-pid",
    "qmp-socket",
    "disk-full",
    "kill-forward-watcher",
    "freeze-qemu",
    "damage-db",
    "host-reboot",
    "base-image-away",
    "kill-download",
    *chaos_mounts.FAULTS,  # kill-mount-host, mount-source-gone, suspend-with-mounts
)
FAULT_WEIGHTS = (12, 6, 10, 8, 8, 8, 8, 6, 6, 6, 4, 4, 4, 2, *chaos_mounts.WEIGHTS)
SETTLING_STATES = frozenset({"Starting", "Restarting"})
DB_DAMAGES = ("garbage-at-100", "truncated-to-half", "deleted")


class Walk:
    """One seeded random walk in its own tmpfs storage root.  ``run()`` returns the summary."""

    fault_classes: tuple[str, ...] = FAULTS  # a subclass adds its own (chaos_network.py)
    fault_weights: tuple[int, ...] = FAULT_WEIGHTS

    def __init__(
        self, config: Config, image_dir: Path, *, log: Callable[[str], None] | None = None
    ) -> None:
        self.cfg = config
        self.seed = config.seed
        if config.warm:
            self.fault_classes = (*self.fault_classes, *chaos_warm.FAULTS)
            self.fault_weights = (*self.fault_weights, *chaos_warm.WEIGHTS)
        self.rng = random.Random(config.seed)
        self.image_dir = image_dir
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.root: Path | None = None
        self.env: dict[str, str] = {}
        self.step = -1
        self.instances: dict[str, Inst] = {}  # launched and not purged
        # Launches that failed and purges cut off by a daemon kill: the instance may or
        # may not exist; the next `ketch list` decides.
        self.pending: dict[str, Inst] = {}
        self.ever: set[str] = set()  # every name ever launched
        self.states: dict[str, str] = {}  # from the last `ketch list`
        self.sleepers: list[subprocess.Popen[bytes]] = []
        self.filler: Path | None = None
        self.filler_step = -1
        self.next_index = 0
        self.violations: list[Violation] = []
        self.ops: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.faults_skipped: Counter[str] = Counter()
        self.exit_codes: dict[str, Counter[int | str]] = defaultdict(Counter)
        self.durations: dict[str, list[float]] = defaultdict(list)
        self.doctor_fixed: Counter[str] = Counter()
        self.doctor_unfixed: Counter[str] = Counter()
        self.recoveries: Counter[str] = Counter()  # ketchd's start-up recovery, by outcome
        self.observations: Counter[str] = Counter()  # known bugs seen acting, not violations
        self.quarantines: list[dict[str, Any]] = []
        self.checkpoints = 0
        self.canary_checks = 0
        self.purged_all = False
        self.notes: list[str] = []
        self.images = chaos_images.ImageFaults(self)

    # -- plumbing ----------------------------------------------------------------------

    def log(self, message: str) -> None:
        self._log(f"chaos seed={self.seed} step={self.step}: {message}")

    def violate(
        self, invariant: str, detail: str, command: str = "", known: str | None = None
    ) -> None:
        if known not in KNOWN_BUGS:
            known = None  # a fixed bug that shows again is a regression
        v = Violation(self.seed, self.step, invariant, detail, command, known)
        self.violations.append(v)
        self.log(f"VIOLATION {v}")

    def _argv(self, args: tuple[str, ...]) -> list[str]:
        return [sys.executable, "-m", "ketch.cli.main", *args]

    def cli(self, *args: str, kind: str | None = None, timeout: float = COMMAND_TIMEOUT) -> Result:
        """Run ``ketch ARGS``; record its exit code and duration under ``kind``."""
        t0 = time.monotonic()
        try:
            done = subprocess.run(
                self._argv(args),
                capture_output=True,
                text=True,
                env=self.env,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            res = Result(
                list(args), done.returncode, done.stdout, done.stderr, time.monotonic() - t0
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
            res = Result(list(args), None, out, err, time.monotonic() - t0)
        self._record(kind or args[0], res)
        return res

    def reap(self, proc: subprocess.Popen[str], args: list[str], t0: float, *, kind: str) -> Result:
        """Wait for a ``ketch`` command started with Popen (as :meth:`cli` runs one)."""
        try:
            out, err = proc.communicate(timeout=COMMAND_TIMEOUT)
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            rc = None
        res = Result(args, rc, out, err, time.monotonic() - t0)
        self._record(kind, res)
        return res

    def _record(self, kind: str, res: Result) -> None:
        self.exit_codes[kind][res.rc if res.rc is not None else "timeout"] += 1
        self.durations[kind].append(res.seconds)

    def check_clear(self, res: Result, *, guest_code: int | None = None) -> None:
        """A documented exit code; a failure says why, without a traceback."""
        if res.rc is None:
            self.violate("no-hang", f"did not finish within {COMMAND_TIMEOUT:g} s", res.command)
            return
        if res.rc != 0 and res.rc == guest_code:
            return  # exec passed the guest's own exit code through
        if res.rc not in DOCUMENTED_EXIT_CODES:
            known = None
            if res.args[0] == "exec" and res.rc == 255 and not res.stderr.strip():
                known = "exec-silent-255"
            self.violate(
                "exit-code",
                f"exit {res.rc}; stderr {res.stderr.strip()[:300]!r}",
                res.command,
                known,
            )
        if "Traceback (most recent call last)" in res.stderr:
            self.violate("no-traceback", res.stderr.strip()[-400:], res.command)
        if "internal error" in res.stderr.lower():
            self.violate("no-internal-error", res.first_error_line(), res.command)
        said = res.stderr.strip() or (res.args[0] == "doctor" and res.stdout.strip())
        if res.rc != 0 and not said and res.rc in DOCUMENTED_EXIT_CODES:
            # (doctor exits 2 when it found something, and says what on stdout)
            self.violate("clear-message", f"exit {res.rc} with nothing on stderr", res.command)
        booted = res.args[0] in ("launch", "start", "restart", "exec")
        name = _target_of(res.args)
        if res.rc == 5 and booted and name:
            self.check_timeout(res, name)

    def check_timeout(self, res: Result, name: str) -> None:
        """A boot that timed out: was there anything left to wait for?"""
        why = None
        if not self.qemu_running(name):
            why = "its QEMU is not running"
        else:
            info = self.cli("info", name, "--format", "json", kind="info")
            with contextlib.suppress(ValueError, KeyError, TypeError):
                for inc in json.loads(info.stdout)["info"][name]["inconsistencies"]:
                    if inc["code"] in NOT_RUNNING_GUEST:
                        why = f"its guest does not run ({inc['message']})"
        if why:
            # ketch waited the whole boot timeout for a guest that could not come,
            # and then said "not ready" instead of what happened.
            self.violate(
                "no-wait-for-the-dead",
                f"timed out waiting for {name} although {why}: {res.first_error_line()}",
                res.command,
                known="wait-ready-blind",
            )

    # -- set-up and teardown ---------------------------------------------------------------

    def setup(self) -> None:
        self.root = mount_tmpfs(self.cfg.tmpfs_size, prefix=f"kchaos-{self.seed}-")
        # The network rule (tests/conftest.py sets it for pytest; bench/chaos.py runs
        # outside it): no bridge, TAP, dnsmasq or NAT in the machine's own namespace.
        # Without it every walk's root shared the bridge ketch0 with every other root,
        # and one root's doctor removed the TAPs of another's running instances.
        self.env = {**os.environ, "KETCH_STORAGE": str(self.root), "KETCH_NETWORK_DEFAULT": "user"}
        self.env.pop("KETCH_BOOT_TIMEOUT", None)
        # The network rule: no bridge, TAP, dnsmasq or NAT in the machine's own namespace
        # (bench/chaos.py runs outside pytest's conftest); NetWalk runs in a namespace.
        self.env.setdefault("KETCH_NETWORK_DEFAULT", "user")
        seed_vault(self.root, self.image_dir)
        res = self.cli("set", "local.accel=tcg", kind="set")
        if res.rc != 0:
            raise RuntimeError(f"ketch set local.accel=tcg failed: {res.stderr}")
        if self.cfg.warm:
            chaos_warm.setup(self)
        self.log(
            f"storage root {self.root} (tmpfs {self.cfg.tmpfs_size}), "
            f"{self.cfg.steps} steps, {self.cfg.vms} VMs"
        )

    def teardown(self) -> None:
        """Purge everything, stop the daemon, end what is left of ours, unmount."""
        root = self.root
        if root is None:
            return
        self.release_filler()
        self.read_daemon_log()
        if not self.purged_all and (root / "ketch.db").exists():
            with contextlib.suppress(Exception):
                self.cli("delete", "--all", "--purge", kind="teardown", timeout=300)
        self.stop_daemon()
        chaos_mounts.teardown(self)
        self.images.close()
        for pids in qemu_processes(root).values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proc in self.sleepers:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        deadline = time.monotonic() + 30
        while qemu_processes(root) and time.monotonic() < deadline:
            time.sleep(0.1)
        done = subprocess.run(["umount", str(root)], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(root)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            root.rmdir()

    def monitored(self, name: str) -> bool:
        """Does the instance's QMP socket exist?  A forward watcher works through QEMU's
        monitor: with the socket deleted (the instance Unknown until doctor) none is due."""
        return (self.idir(name) / "qmp.sock").exists()

    def log_daemon_lines(self, word: str, last: int = 30) -> None:
        """Copy ketchd.log's last lines that name ``word`` into the walk's log (a diagnosis)."""
        assert self.root is not None
        try:
            lines = (self.root / "ketchd.log").read_text(errors="replace").splitlines()
        except OSError as exc:
            self.log(f"ketchd.log: {exc}")
            return
        for line in [ln for ln in lines if word in ln][-last:]:
            self.log(f"  ketchd.log: {line}")

    def read_daemon_log(self) -> None:
        """Count what ketchd's start-up recovery did (from ketchd.log), by kind."""
        assert self.root is not None
        try:
            lines = (self.root / "ketchd.log").read_text(errors="replace").splitlines()
        except OSError:
            return
        for line in lines:
            for marker in ("recovered: ", "recovery of interrupted operations failed"):
                if marker in line:
                    what = line.split(marker, 1)[1] if marker == "recovered: " else line
                    op, _, rest = what.partition(" on ")
                    outcome = rest.split(": ", 1)[1] if ": " in rest else rest
                    self.recoveries[f"{op}: {outcome}"] += 1

    def daemon_pid(self) -> int | None:
        assert self.root is not None
        pid = read_pid(self.root / "ketchd.pid")
        if pid is None or not alive(pid):
            return None
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return pid if any(b"ketch.daemon.main" in a or b"ketchd" in a for a in argv) else None

    def stop_daemon(self) -> None:
        pid = self.daemon_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 40
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)

    # -- observation ----------------------------------------------------------------------

    def idir(self, name: str) -> Path:
        assert self.root is not None
        return self.root / "instances" / name

    def qemu_running(self, name: str) -> bool:
        assert self.root is not None
        return name in qemu_processes(self.root)

    def has_tag(self, name: str) -> bool | None:
        snaps = snapshots(self.idir(name) / "disk.qcow2")
        return None if snaps is None else any(s.get("name") == "suspend" for s in snaps)

    def check_list(self) -> None:
        """`ketch list --format json` works and lists every instance launched and not purged."""
        res = self.cli("list", "--format", "json", kind="list")
        self.check_clear(res)
        if res.rc != 0:
            self.violate("list-works", f"exit {res.rc}: {res.first_error_line()}", res.command)
            return
        try:
            entries = {e["name"]: e for e in json.loads(res.stdout)["list"]}
        except (ValueError, KeyError, TypeError) as exc:
            self.violate("list-works", f"not the JSON list shape: {exc}", res.command)
            return
        for name, inst in sorted(self.pending.items()):
            if name in entries:
                self.instances[name] = inst
        self.pending.clear()
        for name in sorted(self.instances):
            if name not in entries:
                self.violate("no-instance-lost", f"{name} is no longer listed", res.command)
                del self.instances[name]
        for name in sorted(set(entries) - self.ever):
            self.violate("no-ghost", f"{name} is listed but was never launched", res.command)
        self.states = {n: str(e.get("state")) for n, e in entries.items()}

    def check_sleepers(self) -> None:
        for proc in self.sleepers:
            if proc.poll() is not None:
                self.violate(
                    "foreign-never-signalled",
                    f"sleep {proc.pid} (named by a pid file) ended: {proc.returncode}",
                )
        self.sleepers = [p for p in self.sleepers if p.poll() is None]

    # -- operations ------------------------------------------------------------------------

    def new_name(self) -> str:
        self.next_index += 1
        return f"c{self.seed}-{self.next_index}"

    def pick(self) -> str | None:
        names = sorted(self.instances)
        return self.rng.choice(names) if names else None

    def choose(self) -> tuple[str, str | None]:
        """An operation and its target: mostly one the target's state accepts, else any."""
        missing = self.cfg.vms - len(self.instances)
        if not self.instances or (missing > 0 and self.rng.random() < 0.7):
            return "launch", None
        name = self.pick()
        valid = VALID_OPS.get(self.states.get(name or "", ""), ())
        if valid and self.rng.random() < 0.75:
            return self.rng.choice(valid), name
        return self.rng.choices(OPS[1:], OP_WEIGHTS[1:])[0], name

    def do_op(self, op: str, name: str | None = None) -> None:
        self.ops[op] += 1
        if op == "launch":
            self.op_launch()
            return
        name = name or self.pick()
        assert name is not None
        if op == "exec":
            self.op_exec(name)
            return
        args = op.split(" ")
        if op == "delete --purge":
            args = ["delete", "--purge"]
        res = self.cli(*args, name, kind=op)
        self.log(f"{op} {name} -> rc={res.rc} ({res.seconds:.1f}s) {res.first_error_line()}")
        self.after(op, name, res)

    def after(self, op: str, name: str, res: Result, *, interrupted: bool = False) -> None:
        """Invariants on one finished operation, then its postcondition."""
        self.check_clear(res)
        if op in ("stop --force", "delete --purge") and res.rc != 0 and not interrupted:
            full = "database or disk is full" in res.stderr
            self.violate(
                "never-fails",
                f"exit {res.rc}: {res.first_error_line()}",
                res.command,
                known="force-on-full-disk" if full else None,
            )
        if op == "delete --purge" and res.rc == 0:
            self.instances.pop(name, None)
        if res.rc != 0 or interrupted:
            return
        state = self.state_of(name)
        postconditions: dict[str, set[str | None]] = {
            "start": {"Running"},
            "restart": {"Running"},
            "stop": {"Stopped"},
            "suspend": {"Suspended"},
            "delete": {"Deleted"},
            "stop --force": {"Stopped", "Deleted"},
            "recover": {"Running", "Stopped", "Suspended", "Unknown"},
            "delete --purge": {None},
        }
        expect = postconditions.get(op)
        inst = self.instances.get(name)
        if inst is not None and inst.quarantine and op == "stop --force":
            expect = {"Unknown"}
        if expect is not None and state not in expect:
            self.violate(
                "postcondition",
                f"exit 0 but the state is {state}, not "
                f"{' or '.join(str(s) for s in sorted(expect, key=str))}",
                res.command,
            )
        if op in ("start", "restart") and state == "Running":
            self.check_canary(name)

    def state_of(self, name: str) -> str | None:
        res = self.cli("list", "--format", "json", kind="list")
        if res.rc != 0:
            return "?"
        for e in json.loads(res.stdout).get("list", []):
            if e.get("name") == name:
                return str(e.get("state"))
        return None

    def op_launch(self, name: str | None = None) -> None:
        name = name or self.new_name()
        self.ever.add(name)
        mount = chaos_mounts.launch_args(self, name)
        res = self.cli("launch", "tiny", "--name", name, "--memory", self.cfg.memory, *mount,
                       kind="launch")  # fmt: skip
        self.log(f"launch {name} -> rc={res.rc} ({res.seconds:.1f}s) {res.first_error_line()}")
        self.check_clear(res)
        if res.rc != 0:
            self.pending[name] = Inst(name)
            return
        self.instances[name] = Inst(name)
        state = self.state_of(name)
        if state != "Running":
            self.violate("postcondition", f"launch exited 0 but the state is {state}", res.command)
            return
        if self.cfg.warm:
            chaos_warm.count_launch(self, name)
        self.write_canary(name)

    def write_canary(self, name: str) -> None:
        inst = self.instances[name]
        text = f"canary-{name}-{self.rng.getrandbits(32):08x}"
        res = self.cli(
            "exec",
            name,
            "--",
            "sh",
            "-c",
            f"echo {text} > {CANARY} && sync && cat {CANARY}",
            kind="exec",
        )
        self.check_clear(res)
        if res.rc == 0 and res.stdout.strip() == text:
            inst.canary = text
            self.log(f"canary written in {name}")
        else:
            self.log(f"canary not written in {name} (rc={res.rc}); retried at its next exec")

    def check_canary(self, name: str, *, final: bool = False) -> None:
        inst = self.instances.get(name)
        if inst is None:
            return
        if inst.canary is None:
            self.write_canary(name)
            return
        res = self.cli("exec", name, "--", "cat", CANARY, kind="exec")
        self.check_clear(res)
        self.canary_checks += 1
        if res.rc == 0 and res.stdout.strip() != inst.canary:
            self.violate(
                "canary",
                f"{CANARY} in {name} reads {res.stdout.strip()[:80]!r}, not {inst.canary!r}",
                res.command,
            )
        elif res.rc != 0 and final:
            self.violate(
                "canary",
                f"could not read {CANARY} in {name} at the end: "
                f"exit {res.rc}: {res.first_error_line()}",
                res.command,
            )

    def op_exec(self, name: str) -> None:
        inst = self.instances[name]
        if inst.canary is not None and self.rng.random() < 0.3:
            code = self.rng.choice([0, 1, 7, 42])
            res = self.cli("exec", name, "--", "sh", "-c", f"exit {code}", kind="exec")
            self.log(
                f"exec {name} exit {code} -> rc={res.rc} ({res.seconds:.1f}s) "
                f"{res.first_error_line()}"
            )
            self.check_clear(res, guest_code=code)
            return
        if inst.canary is None:
            self.log(f"exec {name}: write the canary")
            self.write_canary(name)
            return
        res = self.cli("exec", name, "--", "cat", CANARY, kind="exec")
        self.log(
            f"exec {name} cat canary -> rc={res.rc} ({res.seconds:.1f}s) {res.first_error_line()}"
        )
        self.check_clear(res)
        if res.rc == 0:
            self.canary_checks += 1
            if res.stdout.strip() != inst.canary:
                self.violate(
                    "canary",
                    f"{CANARY} in {name} reads {res.stdout.strip()[:80]!r}, not {inst.canary!r}",
                    res.command,
                )

    # -- faults ----------------------------------------------------------------------------

    def do_fault(self, fault: str) -> bool:
        """Inject ``fault``; False when no instance is in a state it applies to."""
        assert self.root is not None
        qemus = qemu_processes(self.root)
        names = sorted(self.instances)
        running = [n for n in names if n in qemus]
        idle = [n for n in names if n not in qemus and (self.idir(n) / "disk.qcow2").exists()]
        if fault in chaos_mounts.FAULTS:
            return chaos_mounts.do_fault(self, fault)
        if fault in chaos_warm.FAULTS:
            return chaos_warm.do_fault(self, fault)
        if fault == "kill-qemu":
            if not running:
                return False
            name = self.rng.choice(running)
            pid = read_pid(self.idir(name) / "qemu.pid")
            if pid not in qemus[name]:
                pid = qemus[name][0]
            os.kill(pid, signal.SIGKILL)
            self.log(f"FAULT kill -9 QEMU of {name} (pid {pid})")
            return True
        if fault == "kill-daemon":
            pid = self.daemon_pid()
            if pid is None:
                return False
            os.kill(pid, signal.SIGKILL)
            self.wait_gone(pid)
            self.log(f"FAULT kill -9 ketchd (pid {pid}) between commands")
            return True
        if fault == "kill-daemon-mid-op":
            return self.fault_daemon_mid_op()
        if fault == "tag-remove":
            have = [n for n in idle if self.has_tag(n)]
            if not have:
                return False
            name = self.rng.choice(have)
            return self.qemu_img_snapshot("-d", name)
        if fault == "tag-add":
            lack = [n for n in idle if self.has_tag(n) is False]
            if not lack:
                return False
            name = self.rng.choice(lack)
            return self.qemu_img_snapshot("-c", name)
        if fault == "foreign-pid":
            if not idle:
                return False
            name = self.rng.choice(idle)
            sleeper = subprocess.Popen(["sleep", "86400"], stdin=subprocess.DEVNULL)
            try:
                (self.idir(name) / "qemu.pid").write_text(f"{sleeper.pid}\n")
            except OSError:
                sleeper.kill()
                sleeper.wait()
                raise
            self.sleepers.append(sleeper)
            self.log(f"FAULT {name}'s qemu.pid names a live sleep (pid {sleeper.pid})")
            return True
        if fault == "qmp-socket":
            socks = [n for n in running if (self.idir(n) / "qmp.sock").exists()]
            if not socks:
                return False
            name = self.rng.choice(socks)
            (self.idir(name) / "qmp.sock").unlink()
            self.log(f"FAULT deleted the QMP socket of running {name}")
            return True
        if fault == "kill-forward-watcher":
            daemon = self.daemon_pid()
            watchers = forward_watchers(self.root, parent=daemon) if daemon else {}
            watchers = {n: p for n, p in watchers.items() if self.monitored(n)}
            if not watchers:
                return False
            name = self.rng.choice(sorted(watchers))
            os.kill(watchers[name], signal.SIGKILL)
            self.log(f"FAULT kill -9 the forward watcher of {name} (pid {watchers[name]})")
            deadline = time.monotonic() + WATCHER_BACK
            while time.monotonic() < deadline:
                again = forward_watchers(self.root, parent=daemon).get(name)
                if again is not None and again != watchers[name]:
                    return True
                if not self.qemu_running(name) or not self.monitored(name):
                    return True  # its QEMU (or its monitor) ended meanwhile: none is due
                time.sleep(0.2)
            self.violate(
                "forward-watcher", f"no new forward watcher for {name} in {WATCHER_BACK} s"
            )
            self.log_daemon_lines(name)
            return True
        if fault == "freeze-qemu":
            return self.fault_freeze(running, qemus)
        if fault == "damage-db":
            return self.fault_damage_db()
        if fault == "host-reboot":
            return self.fault_reboot(qemus)
        if fault == "base-image-away":
            return self.images.base_image_away()
        if fault == "kill-download":
            return self.images.kill_download()
        if fault == "disk-full":
            if self.filler is not None:
                return False
            left = self.rng.choice([0, 2, 8]) * 2**20
            self.fill(left)
            self.log(f"FAULT filled the storage root, {left // 2**20} MiB left")
            return True
        raise ValueError(fault)

    def fault_freeze(self, running: list[str], qemus: dict[str, list[int]]) -> bool:
        """SIGSTOP a QEMU: list answers (Unknown, qmp-unresponsive); SIGCONT; Running again.

        Only a QEMU whose instance is listed Running now: one already Unknown for
        another reason (its QMP socket deleted by an earlier fault, say) stays
        Unknown after SIGCONT, rightly, until doctor repairs it.
        """
        self.check_list()
        answering = [n for n in running if self.states.get(n) == "Running"]
        if not answering:
            return False
        name = self.rng.choice(answering)
        pid = qemus[name][0]
        os.kill(pid, signal.SIGSTOP)
        self.log(f"FAULT kill -STOP QEMU of {name} (pid {pid})")
        try:
            for _ in range(2):
                self.check_list()
                if self.states.get(name) != "Unknown":
                    self.violate("frozen-is-unknown", f"{name} listed {self.states.get(name)}")
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.check_list()
            if self.states.get(name) != "Unknown":
                return True
            time.sleep(0.5)
        self.violate("thawed-is-answered", f"{name} still Unknown 60 s after SIGCONT")
        return True

    def fault_reboot(self, qemus: dict[str, list[int]]) -> bool:
        """Every QEMU and ketchd kill -9ed, another boot id; autostart brings them back."""
        assert self.root is not None
        if not qemus or self.filler is not None:  # no boot on a full disk (see BOOTING)
            return False
        pid = self.daemon_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self.wait_gone(pid)
        for pids in qemus.values():
            for q in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(q, signal.SIGKILL)
        for pids in qemus.values():
            for q in pids:
                self.wait_gone(q)
        (self.root / "boot_id").write_text(f"{self.rng.getrandbits(128):032x}\n")
        self.log(f"FAULT simulated host reboot: ketchd and {len(qemus)} QEMU(s) kill -9ed")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            self.check_list()
            if not SETTLING_STATES & set(self.states.values()):
                return True
            time.sleep(1)
        self.violate("reboot-settles", f"still starting 300 s after the reboot: {self.states}")
        return True

    def fault_damage_db(self) -> bool:
        """End ketchd, damage its database one of three ways; the next command rebuilds it."""
        assert self.root is not None
        if self.filler is not None:  # a new database cannot be made on a full disk (exit 2)
            return False
        self.stop_daemon()
        db = self.root / "ketch.db"
        how = self.rng.choice(DB_DAMAGES)
        if not db.exists():
            how = "deleted"
        db_damage.DAMAGES[how](db)
        self.log(f"FAULT ketch.db {how}")
        return True

    def wait_gone(self, pid: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def qemu_img_snapshot(self, flag: str, name: str) -> bool:
        disk = self.idir(name) / "disk.qcow2"
        done = subprocess.run(
            ["qemu-img", "snapshot", flag, "suspend", str(disk)],
            capture_output=True,
            text=True,
            check=False,
        )
        what = "removed" if flag == "-d" else "added"
        if done.returncode != 0:
            self.log(f"FAULT (not done) qemu-img snapshot {flag} on {name}: {done.stderr.strip()}")
            return False
        self.log(f"FAULT {what} the 'suspend' tag of {name} by hand (QEMU not running)")
        return True

    def fill(self, leave: int) -> None:
        assert self.root is not None
        self.filler = self.root / "chaos-filler"
        free = shutil.disk_usage(self.root).free
        with self.filler.open("wb") as f, contextlib.suppress(OSError):
            os.posix_fallocate(f.fileno(), 0, max(free - leave, 1))
        self.filler_step = self.step

    def disk_full(self) -> bool:
        return self.filler is not None and self.filler_step == self.step - 1

    def release_filler(self) -> None:
        if self.filler is not None:
            with contextlib.suppress(FileNotFoundError):
                self.filler.unlink()
            self.log("removed the disk filler")
            self.filler = None

    def fault_daemon_mid_op(self) -> bool:
        """Start an operation, kill -9 ketchd a random moment later, check what the CLI said."""
        if self.daemon_pid() is None:
            self.cli("list", "--format", "json", kind="list")  # starts one
        pid = self.daemon_pid()
        if pid is None:
            return False
        choices = [
            "start",
            "stop",
            "suspend",
            "restart",
            "stop --force",
            "delete",
            "delete --purge",
        ]
        if len(self.instances) < self.cfg.vms:
            choices.append("launch")
        if self.disk_full() and not self.cfg.boot_on_full_disk:
            choices = [c for c in choices if c not in BOOTING]
        if not self.instances:
            choices = ["launch"]
        op = self.rng.choice(choices)
        delay = round(self.rng.uniform(0.02, 1.0) * TYPICAL_SECONDS[op], 2)
        if op == "launch":
            name = self.new_name()
            self.ever.add(name)
            args = ["launch", "tiny", "--name", name, "--memory", self.cfg.memory]
        else:
            # a target the operation has something to do on, when there is one
            fits = [
                n for n in sorted(self.instances) if op in VALID_OPS.get(self.states.get(n, ""), ())
            ]
            name = self.rng.choice(fits) if fits else (self.pick() or "")
            args = ["delete", "--purge", name] if op == "delete --purge" else [*op.split(" "), name]
        self.ops[op] += 1
        t0 = time.monotonic()
        proc = subprocess.Popen(
            self._argv(tuple(args)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env,
        )
        time.sleep(delay)
        cut = proc.poll() is None
        os.kill(pid, signal.SIGKILL)
        self.wait_gone(pid)
        res = self.reap(proc, args, t0, kind=op)
        self.log(
            f"FAULT kill -9 ketchd (pid {pid}) {delay}s into '{' '.join(args)}' "
            f"({'cut off' if cut else 'it had already ended'}) -> rc={res.rc} "
            f"{res.first_error_line()}"
        )
        if op == "launch":
            if res.rc == 0:
                self.instances[name] = Inst(name)
                if not cut:
                    self.write_canary(name)
            else:
                self.pending[name] = Inst(name)
            self.check_clear(res)
            return True
        if op == "delete --purge" and cut and name in self.instances:
            self.pending[name] = self.instances.pop(name)  # recovery may finish the purge
        self.after(op, name, res, interrupted=cut)
        return True

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint(self, label: str) -> None:
        """`doctor --fix`, then everything must be consistent."""
        self.checkpoints += 1
        # The disk the walk filled is freed first, as a user would before repairs (doctor
        # cannot record a repair in a full root: seed 1807 step 579, filled at the
        # checkpoint's own step)
        self.release_filler()
        chaos_mounts.restore(self, all_of_them=True)
        if self.cfg.warm:
            chaos_warm.restore(self)
        fixed = self.cli("doctor", "--fix", "--format", "json", kind="doctor --fix")
        self.check_clear(fixed)
        try:
            for f in json.loads(fixed.stdout)["findings"]:
                (self.doctor_fixed if f.get("fixed") else self.doctor_unfixed)[f["code"]] += 1
                if f["code"] == "guest-halted" and "io-error" in f["message"]:
                    # a guest paused by the full disk, ended rather than resumed
                    self.observations["io-error-is-not-halted: doctor --fix ended QEMU"] += 1
                self.log(
                    f"doctor --fix: {f['instance']}: {f['code']}: "
                    f"{'fixed' if f.get('fixed') else 'NOT fixed'}: {f.get('outcome')}"
                )
        except (ValueError, KeyError, TypeError) as exc:
            self.violate(
                "doctor-works",
                f"doctor --fix answered no JSON ({exc}): {fixed.first_error_line()}",
                fixed.command,
            )
        after = self.cli("doctor", "--format", "json", kind="doctor")
        self.check_clear(after)
        info = self.cli("info", "--all", "--format", "json", kind="info")
        self.check_clear(info)
        try:
            entries = json.loads(info.stdout)["info"]
        except (ValueError, KeyError, TypeError) as exc:
            self.violate("info-works", f"no JSON ({exc}): {info.first_error_line()}", info.command)
            entries = {}
        ports = {n: e.get("ssh", {}).get("port") for n, e in entries.items()}
        try:
            findings = json.loads(after.stdout)["findings"]
        except (ValueError, KeyError, TypeError) as exc:
            self.violate(
                "doctor-works", f"no JSON ({exc}): {after.first_error_line()}", after.command
            )
            findings = []
        for f in findings:
            if f["code"] in ACCEPTED_FINDINGS:
                self.log(f"doctor (accepted): {f['instance']}: {f['code']}: {f['message']}")
                continue
            detail = f"{f['instance']}: {f['code']}: {f['message']}"
            port = ports.get(f["instance"])
            if f["code"] == "port-taken" and isinstance(port, int) and port_only_time_wait(port):
                # (time-wait-port, found by this walk, fixed in d63d192)
                detail += " (only TIME_WAIT sockets hold the port)"
            self.violate("doctor-clean-after-fix", detail, after.command)
        for name, e in sorted(entries.items()):
            codes = {i["code"] for i in e.get("inconsistencies", [])}
            q = e.get("quarantine")
            inst = self.instances.get(name)
            if q and inst is not None and inst.quarantine != q:
                inst.quarantine = q
                self.quarantines.append(
                    {"seed": self.seed, "step": self.step, "instance": name, "reason": q}
                )
                self.log(f"QUARANTINED {name}: {q}")
            for code in sorted(codes - {"quarantined"}):
                known = "doctor-blind-to-open-journal" if code == "interrupted-operation" else None
                self.violate(
                    "consistent-after-doctor",
                    f"{name}: ketch info still shows {code}",
                    info.command,
                    known,
                )
            state = e.get("state")
            if state not in STABLE_STATES and not q:
                self.violate("stable-after-doctor", f"{name} is {state}", info.command)
        self.reality(entries)
        chaos_mounts.reality(self, entries)
        self.log(f"checkpoint {label} done ({len(entries)} instances)")

    def reality(self, entries: dict[str, Any]) -> None:
        """What ketch says matches what is there."""
        assert self.root is not None
        qemus = qemu_processes(self.root)
        for name, pids in sorted(qemus.items()):
            if name not in entries:
                self.violate(
                    "reality", f"QEMU {pids} runs {name}'s disk but ketch has no such instance"
                )
        for name, e in sorted(entries.items()):
            state = e.get("state")
            if state == "Running":
                pid = read_pid(self.idir(name) / "qemu.pid")
                if pid is None and qemus.get(name) and all(gone(p) for p in qemus[name]):
                    # QEMU unlinks its pid file as it exits (a guest powered off by an ACPI
                    # request sent before a daemon kill, seed 1807 step 509): info looked
                    # before, the scan after; the next look says Stopped
                    self.observations["a QEMU exiting between info and the process scan"] += 1
                    self.log(f"{name}'s QEMU {qemus[name]} was exiting at the checkpoint")
                elif pid not in qemus.get(name, []):
                    self.violate(
                        "reality",
                        f"{name} is Running but its pid file names {pid}, "
                        f"not its QEMU {qemus.get(name)}",
                    )
            elif name in qemus:
                self.violate("reality", f"{name} is {state} but QEMU {qemus[name]} runs its disk")
            if state in ("Suspended", "Stopped") and not e.get("quarantine"):
                snaps = snapshots(self.idir(name) / "disk.qcow2") or []
                tag = next((s for s in snaps if s.get("name") == "suspend"), None)
                if state == "Stopped" and tag is not None:
                    self.violate("reality", f"{name} is Stopped but its disk holds a 'suspend' tag")
                if state == "Suspended" and (tag is None or not tag.get("vm-state-size")):
                    self.violate(
                        "reality",
                        f"{name} is Suspended but its 'suspend' tag holds no VM state",
                        known="disk-only-suspend-tag",
                    )

    def final(self) -> None:
        """Start every instance and read its canary; then purge everything."""
        self.release_filler()
        self.checkpoint("final")
        self.check_list()
        for name in sorted(self.instances):
            inst = self.instances[name]
            if self.states.get(name) == "Deleted":
                res = self.cli("recover", name, kind="recover")
                self.check_clear(res)
                if res.rc != 0:
                    self.violate(
                        "final-start",
                        f"recover {name}: exit {res.rc}: {res.first_error_line()}",
                        res.command,
                    )
            if inst.quarantine:
                self.log(f"final: {name} is quarantined ({inst.quarantine}); not started")
                continue
            res = self.cli("start", name, kind="start")
            self.log(
                f"final start {name} -> rc={res.rc} ({res.seconds:.1f}s) {res.first_error_line()}"
            )
            self.check_clear(res)
            if res.rc != 0:
                known = "disk-only-suspend-tag" if "disk-only snapshot" in res.stderr else None
                self.violate(
                    "final-start", f"exit {res.rc}: {res.first_error_line()}", res.command, known
                )
                continue
            self.check_canary(name, final=True)
        for name in sorted(self.instances):
            res = self.cli("delete", "--purge", name, kind="delete --purge")
            self.after("delete --purge", name, res)
        self.purged_all = True
        self.check_list()
        if self.states:
            self.violate("purge-all", f"still listed after purging: {sorted(self.states)}")
        assert self.root is not None
        deadline = time.monotonic() + 30
        while qemu_processes(self.root) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = qemu_processes(self.root)
        if left:
            self.violate("purge-all", f"QEMU processes left after purging everything: {left}")

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        error: str | None = None
        steps_run = 0
        try:
            self.setup()
            for step in range(self.cfg.steps):
                self.step = step
                self.one_step()
                steps_run += 1
                if self.filler is not None and self.step > self.filler_step:
                    self.release_filler()
                chaos_mounts.restore(self)
                if (self.step + 1) % self.cfg.doctor_every == 0:
                    self.checkpoint(f"after step {self.step}")
            self.step = self.cfg.steps
            self.final()
        except Exception as exc:  # the walk itself broke: report it, still clean up
            error = f"{type(exc).__name__}: {exc}"
            self.violate("walk-error", error)
            import traceback

            self.log(traceback.format_exc())
        finally:
            self.teardown()
        return self.summary(started, steps_run, time.monotonic() - t0, error)

    def one_step(self) -> None:
        if self.instances and self.rng.random() < self.cfg.fault_rate:
            chosen = [
                (f, w)
                for f, w in zip(self.fault_classes, self.fault_weights, strict=True)
                if not self.cfg.faults or f in self.cfg.faults
            ]
            order = [f for f, _ in chosen]
            # Classes not injected yet come first (weight x20): short walks cover them all.
            weights = [w * (1 if self.faults[f] else 20) for f, w in chosen]
            while order:
                fault = self.rng.choices(order, weights)[0]
                try:
                    done = self.do_fault(fault)
                except OSError as exc:  # e.g. the pid file cannot be written on a full disk
                    self.log(f"FAULT {fault} could not be injected: {exc}")
                    done = False
                if done:
                    self.faults[fault] += 1
                    break
                self.faults_skipped[fault] += 1
                i = order.index(fault)
                del order[i], weights[i]
        else:
            op, name = self.choose()
            if self.disk_full():
                # right after the disk filled up: prefer what writes to it most
                running = [n for n in sorted(self.instances) if self.qemu_running(n)]
                if running and self.rng.random() < 0.6:
                    op, name = "suspend", self.rng.choice(running)
                elif not self.cfg.boot_on_full_disk and op in BOOTING and self.instances:
                    op, name = self.rng.choice(NOT_BOOTING), self.pick()
            self.do_op(op, name)
        self.after_step()

    def after_step(self) -> None:
        self.check_list()
        self.check_sleepers()

    # -- the summary -------------------------------------------------------------------------

    def summary(
        self, started: str, steps_run: int, seconds: float, error: str | None
    ) -> dict[str, Any]:
        hist: Counter[str] = Counter()
        for codes in self.exit_codes.values():
            for code, n in codes.items():
                hist[str(code)] += n
        known = Counter(v.known for v in self.violations if v.known)
        unknown = [v for v in self.violations if not v.known]
        return {
            "seed": self.seed,
            "started": started,
            "steps_requested": self.cfg.steps,
            "steps_run": steps_run,
            "vms": self.cfg.vms,
            "doctor_every": self.cfg.doctor_every,
            "duration_s": round(seconds, 1),
            "operations": dict(sorted(self.ops.items())),
            "faults": dict(sorted(self.faults.items())),
            "faults_not_applicable": dict(sorted(self.faults_skipped.items())),
            "checkpoints": self.checkpoints,
            "canary_checks": self.canary_checks,
            "doctor_fixed": dict(sorted(self.doctor_fixed.items())),
            "doctor_not_fixed": dict(sorted(self.doctor_unfixed.items())),
            "daemon_recoveries": dict(sorted(self.recoveries.items())),
            "quarantines": self.quarantines,
            "observations": dict(sorted(self.observations.items())),
            **({"warm": chaos_warm.summary(self)} if self.cfg.warm else {}),
            "exit_codes": {
                k: {str(c): n for c, n in sorted(v.items(), key=lambda x: str(x[0]))}
                for k, v in sorted(self.exit_codes.items())
            },
            "exit_code_histogram": dict(sorted(hist.items())),
            "durations_s": {
                k: {
                    "n": len(v),
                    "median": round(sorted(v)[len(v) // 2], 2),
                    "max": round(max(v), 2),
                    "total": round(sum(v), 1),
                }
                for k, v in sorted(self.durations.items())
            },
            "violations": [asdict(v) for v in self.violations],
            "unknown_violations": len(unknown),
            "known_violations": dict(sorted(known.items())),
            "error": error,
            "replay": f"python bench/chaos.py --seed {self.seed} --steps {self.cfg.steps} "
            f"--vms {self.cfg.vms} --doctor-every {self.cfg.doctor_every} "
            f"--fault-rate {self.cfg.fault_rate:g}"
            + (" --boot-on-full-disk" if self.cfg.boot_on_full_disk else "")
            + (f" --faults {','.join(self.cfg.faults)}" if self.cfg.faults else ""),
        }


def run_walk(
    config: Config, image_dir: Path, *, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run one walk (root-only: it mounts a tmpfs) and return its summary."""
    return Walk(config, image_dir, log=log).run()
