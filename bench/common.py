"""Shared helpers for ketch's benchmarks (``bench/*.py``).

Every benchmark compares ketch against a baseline measured in the same
process, interleaved (A B A B ...), and reports the ratio of the medians, so
numbers are comparable between machines and runs; absolute times are printed
for context only.  Each script ends by printing one JSON line (``{"bench":
...}``) from which ``docs/benchmarks.md`` can be regenerated.

A benchmark works in a fresh storage root under ``/tmp`` (short: Unix
sockets live in it) with the built-in tiny image pre-seeded as hard links
(as ``tests/integration/conftest.py`` does), so nothing is rebuilt or
downloaded while timing.  :class:`Bench` tears everything down at the end:
``ketch delete --all --purge``, the daemon, any QEMU left, the directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ketch.client import Client
from ketch.host import procs
from ketch.layout import Root
from ketch.model import BootSpec, ImageInfo, InstanceSpec, Intent
from ketch.sshtarget import SshTarget

PY = sys.executable
_KETCH_SCRIPT = Path(PY).with_name("ketch")
# The console script a user runs; ``python -m`` when it is not installed.
KETCH = [str(_KETCH_SCRIPT)] if _KETCH_SCRIPT.exists() else [PY, "-m", "ketch.cli.main"]


# ---- arithmetic and output ---------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(subject: Sequence[float], baseline: Sequence[float]) -> float:
    """median(subject) / median(baseline)."""
    return median(subject) / median(baseline)


def paired_ratio(subject: Sequence[float], baseline: Sequence[float]) -> float:
    """The median of the per-pair ratios (robust to drift during a run)."""
    return median([s / b for s, b in zip(subject, baseline, strict=True)])


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` took (wall clock)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleave(
    sides: dict[str, Callable[[], float]], runs: int, *, label: str = "", warmup: int = 0
) -> dict[str, list[float]]:
    """Run every side once per run, the order rotating each run (A B C, B C A ...).

    Each callable returns the seconds it measured (so it can leave its own
    setup and cleanup out of the figure).  ``warmup`` rounds run first and are
    discarded.
    """
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(sides[name]())
        if label:
            shown = ", ".join(f"{n} {out[n][-1]:.3f} s" for n in names)
            log(f"{label} run {i + 1}/{runs}: {shown}")
    return out


def abab(
    baseline: Callable[[], float],
    subject: Callable[[], float],
    runs: int,
    *,
    label: str = "",
    warmup: int = 0,
) -> tuple[list[float], list[float]]:
    """Baseline and subject alternately (A B, B A, A B ...); their times."""
    got = interleave({"baseline": baseline, "ketch": subject}, runs, label=label, warmup=warmup)
    return got["baseline"], got["ketch"]


def summary(base: Sequence[float], subj: Sequence[float], goal: float | None) -> dict[str, Any]:
    """A result entry: medians, the ratio, and whether the goal is met."""
    r = ratio(subj, base)
    out: dict[str, Any] = {
        "baseline_median_s": round(median(base), 4),
        "ketch_median_s": round(median(subj), 4),
        "ratio": round(r, 3),
        "paired_ratio": round(paired_ratio(subj, base), 3),
        "runs": len(base),
        "baseline_s": [round(x, 4) for x in base],
        "ketch_s": [round(x, 4) for x in subj],
    }
    if goal is not None:
        out["goal"] = goal
        out["met"] = r <= goal
    return out


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """A human-readable table of result entries on stdout."""
    print(f"{'measurement':<34} {'baseline':>10} {'ketch':>10} {'ratio':>7}  goal")
    for name, r in rows:
        goal = r.get("goal")
        verdict = "" if goal is None else f"<= {goal:g} " + ("met" if r["met"] else "MISSED")
        print(
            f"{name:<34} {r['baseline_median_s']:>9.3f}s {r['ketch_median_s']:>9.3f}s "
            f"{r['ratio']:>7.2f}  {verdict}"
        )


def emit(bench: str, results: dict[str, Any], **extra: Any) -> None:
    """The final JSON line of a benchmark (the source of docs/benchmarks.md)."""
    doc = {
        "bench": bench,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": host_facts(),
        **extra,
        "results": results,
    }
    print(json.dumps(doc, sort_keys=False), flush=True)


def host_facts() -> dict[str, Any]:
    load = os.getloadavg()[0]
    qemu = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "qemu": qemu[0] if qemu else "unknown",
        "loadavg_1m_at_end": round(load, 2),
    }


def arg_parser(doc: str | None, runs: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=runs, help=f"pairs of runs (default {runs})")
    return p


# ---- the tiny image ---------------------------------------------------------------


def image_cache() -> Path:
    """The test image cache: ``$KETCH_TEST_CACHE`` or ``~/.cache/ketch-test/images``,
    as for the tests (made if missing)."""
    cache = Path(os.environ.get("KETCH_TEST_CACHE") or "~/.cache/ketch-test/images").expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def tiny_image() -> ImageInfo:
    """The built-in tiny image from the test cache (built there once if missing)."""
    from ketch.images.tiny import build_tiny

    return asyncio.run(build_tiny(image_cache()))


def bench_env(root: Path) -> dict[str, str]:
    """The environment of every process a benchmark runs (ketch, baselines).

    ``KETCH_STORAGE`` is the benchmark's root.  Bytecode is cached under the
    root (``PYTHONPYCACHEPREFIX``) and written even if the caller's
    environment says ``PYTHONDONTWRITEBYTECODE``: a module edited since its
    ``.pyc`` was written would otherwise be compiled again by every process,
    which is not what an installed ketch does.  The first run of each command
    (a warm-up) fills that cache; the source tree is not written to.
    """
    env = {**os.environ, "KETCH_STORAGE": str(root), "PYTHONPYCACHEPREFIX": str(root / "pyc")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # No bridge, TAP or NAT in the machine's own network namespace: user-mode unless
    # a benchmark says otherwise (and runs in a namespace of its own).
    env.setdefault("KETCH_NETWORK_DEFAULT", "user")
    return env


def _link_or_copy(src: str, dst: str) -> None:
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def image_files(tiny: ImageInfo) -> dict[str, int]:
    """The tiny image's files and their sizes in bytes."""
    d = Path(tiny.disk).parent
    return {p.name: p.stat().st_size for p in sorted(d.iterdir()) if p.is_file()}


# ---- the storage root and the CLI ---------------------------------------------------


class Bench:
    """A fresh storage root with the tiny image, its daemon, and teardown."""

    def __init__(self, prefix: str = "kb-") -> None:
        self.tiny_src = tiny_image()
        self.root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.env = bench_env(self.root)
        src = Path(self.tiny_src.disk).parent
        dst = self.root / "vault" / "built" / "tiny" / src.name
        dst.parent.mkdir(parents=True)
        shutil.copytree(src, dst, copy_function=_link_or_copy)
        from ketch.images.tiny import load_tiny

        self.tiny = load_tiny(dst)  # paths inside this root, as the daemon sees them
        self.work = self.root / "w"  # the benchmarks' own files (baseline VMs ...)
        self.work.mkdir()
        self._children: list[subprocess.Popen[bytes]] = []
        self._qemu_pidfiles: list[Path] = []

    # -- the image -----------------------------------------------------------------

    def ensure_image(self) -> bool:
        """Make sure the daemon's tiny image is built for the current ketch; reload it.

        The tiny image's key hashes ketch's build recipe and guest files, so an
        edit to them (or a package update) makes the next launch rebuild it.
        ``ketch image build tiny`` (a no-op when cached) runs here, untimed; the
        newest image directory is then the one a launch will use.  Returns True
        when it had to build.
        """
        from ketch.images.tiny import load_tiny

        tiny_dir = self.root / "vault" / "built" / "tiny"
        before = {p.name for p in tiny_dir.iterdir()}
        self.ketch("image", "build", "tiny", timeout=1800)
        dirs = [p for p in tiny_dir.iterdir() if not p.name.startswith(".")]
        newest = max(dirs, key=lambda p: (p / "manifest.json").stat().st_mtime)
        self.tiny = load_tiny(newest)
        return {p.name for p in tiny_dir.iterdir()} != before

    # -- the CLI ------------------------------------------------------------------

    def ketch(
        self, *args: str, check: bool = True, timeout: float = 600, **kw: Any
    ) -> subprocess.CompletedProcess[bytes]:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("stdin", subprocess.DEVNULL)
        done = subprocess.run([*KETCH, *args], env=self.env, timeout=timeout, check=False, **kw)
        if check and done.returncode != 0:
            err = (done.stderr or b"").decode(errors="replace")
            raise RuntimeError(f"ketch {' '.join(args)} exited {done.returncode}: {err}")
        return done

    def ketch_json(self, *args: str) -> Any:
        return json.loads(self.ketch(*args, "--format", "json").stdout)

    def time_ketch(self, *args: str, **kw: Any) -> float:
        t0 = time.perf_counter()
        self.ketch(*args, **kw)
        return time.perf_counter() - t0

    def client(self) -> Client:

        return Client(Root(self.root))

    def ssh_target(self, name: str) -> SshTarget:
        """The SshTarget the daemon hands out for ``name`` (what ketch exec uses)."""
        from ketch.api import routes
        from ketch.api.plain import ssh_target_reply

        return self.client().call_plain(routes.SSH, ssh_target_reply, name=name).target

    # -- the daemon ----------------------------------------------------------------

    def daemon_pid(self) -> int | None:
        pid = procs.read_pidfile(self.root / "ketchd.pid")
        return pid if pid and procs.alive(pid) else None

    def stop_daemon(self) -> None:
        pid = self.daemon_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while procs.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if procs.alive(pid):
            os.kill(pid, signal.SIGKILL)

    def prime_accel(self) -> str:
        """Run ketch's accelerator choice once (the KVM probe, cached per root).

        A fresh root probes KVM on its first launch (up to 10 s here, where KVM
        hangs); every later launch reads the cache.  The benchmarks measure the
        steady state, so the probe runs here, untimed, through ketch's own code.
        """
        from ketch.host import accel

        choice = asyncio.run(accel.probe(Path(self.tiny.boot.kernel or "")))
        accel.save_cached(self.root / "cache" / "accel.json", choice)
        return choice.accel

    # -- records without VMs -----------------------------------------------------------

    def add_stopped(self, count: int, prefix: str = "st") -> list[str]:
        """Insert ``count`` stopped instances straight into ketch's Store.

        Each gets a realistic spec (the tiny image, 1 CPU, 1 GiB, 5 GiB disk, its
        own port, MAC and instance-id) and an instance directory holding a qcow2
        overlay of the tiny image, so the daemon observes real disks.  Call it
        while the daemon is down.
        """
        from ketch.store.db import Store

        store = Store(self.root / "ketch.db")
        names = []
        try:
            used = store.used_ports()
            port = 40000
            for i in range(count):
                while port in used:
                    port += 1
                name = f"{prefix}{i:03d}"
                spec = InstanceSpec(
                    name=name,
                    image="tiny",
                    image_id=self.tiny.id,
                    release=self.tiny.release,
                    cpus=1,
                    memory=1024**3,
                    disk=5 * 1024**3,
                    boot=self.tiny.boot,
                    base_disk=self.tiny.disk,
                    ssh_port=port,
                    mac="52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3)),
                    instance_id=f"i-{uuid.uuid4().hex[:16]}",
                    created=time.time(),
                )
                port += 1
                idir = self.root / "instances" / name
                idir.mkdir(parents=True)
                make_overlay(self.tiny.disk, idir / "disk.qcow2", "5G")
                store.add(spec, Intent.STOP)
                names.append(name)
        finally:
            store.close()
        return names

    # -- processes the benchmark starts itself --------------------------------------

    def track_qemu(self, pidfile: Path) -> None:
        self._qemu_pidfiles.append(pidfile)

    def track(self, proc: subprocess.Popen[bytes]) -> None:
        self._children.append(proc)

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        try:
            if self.daemon_pid() is not None or (self.root / "ketch.db").exists():
                self.ketch("delete", "--all", "--purge", check=False, timeout=300)
        except Exception as exc:  # keep tearing down
            log(f"teardown: ketch delete --all --purge failed: {exc}")
        finally:
            self.stop_daemon()
            for proc in self._children:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            pidfiles = [*self._qemu_pidfiles, *(self.root / "instances").glob("*/qemu.pid")]
            for path in pidfiles:
                pid = procs.read_pidfile(path)
                if pid and procs.alive(pid):
                    argv = procs.cmdline(pid) or []
                    if argv and "qemu-system" in Path(argv[0]).name:
                        procs.terminate(pid)
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- a raw QEMU of the tiny image, driven without ketch ---------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RawVm:
    """An image (the tiny one unless told) under a QEMU started by hand:
    ketch's argv shape, no ketch.

    The overlay disk, host key, seed ISO (ketch's own cloud-init and seed
    functions) and QEMU argv (``ketch.host.qemu.build_argv``) are what ketch
    would make, in a directory of the benchmark's own.  With ``boot`` firmware
    ``uefi``, OVMF as ketch finds it and a copy of its variable template.
    """

    def __init__(
        self,
        bench: Bench,
        name: str,
        *,
        accel: str,
        memory: int = 1024**3,
        image: ImageInfo | None = None,
        boot: BootSpec | None = None,
    ) -> None:
        self.bench = bench
        self.name = name
        self.dir = bench.work / name
        self.accel = accel
        self.memory = memory
        self.image = image or bench.tiny
        self.boot = boot or self.image.boot
        self.port = 0
        self.mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        self.client_key = bench.work / "client_key"
        if not self.client_key.exists():
            from ketch.host import ssh

            ssh.generate_keypair(self.client_key, "bench")
        bench.track_qemu(self.dir / "qemu.pid")

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def qmp_socket(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    def create(self, disk_size: str = "5G") -> None:
        """Overlay disk, host key + known_hosts, seed ISO (what ketch launch writes)."""
        from ketch import cloudinit
        from ketch.host import seed, ssh

        self.dir.mkdir(parents=True)
        make_overlay(self.image.disk, self.disk, disk_size)
        host_key = self.dir / "ssh_host_ed25519_key"
        host_public = ssh.generate_keypair(host_key, f"bench-host-{self.name}")
        (self.dir / "known_hosts").write_text(ssh.known_hosts_line(self.name, host_public) + "\n")
        cfg = cloudinit.merge_vendor(
            None,
            default_user="ubuntu",
            client_public_key=ssh.generate_keypair(self.client_key, "bench"),
            host_key_private=host_key.read_text(),
            host_key_public=host_public,
            hostname=self.name,
        )
        iid = f"i-{uuid.uuid4().hex[:16]}"
        seed.build_seed_iso(
            self.dir / "cidata.iso",
            meta_data=cloudinit.meta_data(iid, self.name),
            user_data=cloudinit.render_user_data(cfg),
            extra_files={
                seed.GUEST_CONFIG_FILE: seed.render_guest_config(
                    cfg, {"instance-id": iid, "local-hostname": self.name}
                ).encode()
            },
        )

    def argv(self, *, loadvm: str | None = None) -> list[str]:
        from ketch.host import firmware, qemu

        efi = firmware.find_uefi() if qemu.uses_uefi(self.boot) else None
        efi_vars = self.dir / "efivars.fd"
        if efi is not None and not efi_vars.exists():
            shutil.copyfile(efi.vars_template, efi_vars)
        cfg = qemu.QemuConfig(
            name=self.name,
            cpus=1,
            memory=self.memory,
            accel=self.accel,
            disk=self.disk,
            seed_iso=self.dir / "cidata.iso",
            boot=self.boot,
            pidfile=self.pidfile,
            qmp_socket=self.qmp_socket,
            serial_log=self.dir / "serial.log",
            ssh_port=self.port,
            mac=self.mac,
            loadvm=loadvm,
            efi_code=efi.code if efi else None,
            efi_vars=efi_vars if efi else None,
        )
        return qemu.build_argv(cfg)

    def start(self, *, loadvm: str | None = None) -> None:
        """Start QEMU detached (returns once the pid file is written)."""
        if not self.port:
            self.port = free_port()
        for p in (self.pidfile, self.qmp_socket):
            p.unlink(missing_ok=True)
        subprocess.run(self.argv(loadvm=loadvm), check=True, capture_output=True)

    def target(self) -> SshTarget:
        return SshTarget(
            name=self.name,
            host="127.0.0.1",
            port=self.port,
            user="ubuntu",
            identity=str(self.client_key),
            known_hosts=str(self.dir / "known_hosts"),
        )

    def ssh_argv(self, remote: str) -> list[str]:
        from ketch.host import ssh

        return ssh.ssh_argv(self.target(), remote, tty=False, batch=True)

    def wait_ssh(
        self, *, timeout: float = 600, poll: float = 0.25, connect_timeout: int | None = 1
    ) -> None:
        """Poll ``ssh ... test -f boot-finished`` until it succeeds.

        The argv is ketch's (``ketch.host.ssh.ssh_argv``: same key, pinned host
        key, options), with ``ConnectTimeout`` lowered to ``connect_timeout``
        seconds (None keeps ketch's).  QEMU's user-mode network accepts the
        host side of a forwarded connection at once, but a connection opened
        before the guest's network is up gets no answer at all: each probe
        then hangs for its whole timeout, so a short one finds the guest as
        soon as it is reachable.
        """
        from ketch.host.ssh import BOOT_FINISHED

        argv = self.ssh_argv(f"test -f {BOOT_FINISHED}")
        if connect_timeout is not None:
            argv = [
                f"ConnectTimeout={connect_timeout}" if a.startswith("ConnectTimeout=") else a
                for a in argv
            ]
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no SSH within {timeout:g} s: {done.stderr!r}")
            time.sleep(poll)

    def pid(self) -> int | None:
        return procs.read_pidfile(self.pidfile)

    def wait_exit(self, pid: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while procs.alive(pid):
            if time.monotonic() > deadline:
                procs.terminate(pid)
                return
            time.sleep(0.02)

    def kill(self) -> None:
        pid = self.pid()
        if pid and procs.alive(pid):
            procs.terminate(pid)
            self.wait_exit(pid)

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Qmp:
    """A minimal synchronous QMP client (JSON lines over the Unix socket)."""

    def __init__(self, path: Path, timeout: float = 30) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rwb")
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError("QMP closed the connection")
            msg: dict[str, Any] = json.loads(line)
            if "event" not in msg:
                return msg

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"QMP {command}: {reply['error']}")
        return reply.get("return")

    def run_job(self, command: str, arguments: dict[str, Any], poll: float = 0.05) -> None:
        job_id = arguments["job-id"]
        self.execute(command, arguments)
        while True:
            job = next((j for j in self.execute("query-jobs") if j["id"] == job_id), None)
            if job is None:
                return
            if job["status"] == "concluded":
                self.execute("job-dismiss", {"id": job_id})
                if job.get("error"):
                    raise RuntimeError(f"{command}: {job['error']}")
                return
            time.sleep(poll)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()


# ---- small process helpers ---------------------------------------------------------------


def make_overlay(base: str, path: Path, size: str) -> None:
    """``qemu-img create -f qcow2 -b BASE -F qcow2 PATH SIZE``."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2"]
    subprocess.run([*argv, str(path), size], check=True)


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def fresh_bench(prefix: str = "kb-") -> Iterator[Bench]:
    """A :class:`Bench`, closed on exit (also on Ctrl-C)."""
    bench = Bench(prefix)
    try:
        yield bench
    finally:
        bench.close()
