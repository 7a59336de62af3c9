"""The chaos walk's image faults: a base image moved away and back, a download cut off.

Two fault classes of :mod:`chaos` (issue 18 item 6), kept here so that
``chaos.py`` only names them in ``FAULTS`` and dispatches in ``do_fault``:

==================  ==================================================================
fault               what is done
==================  ==================================================================
base-image-away     the cached image the instances' disks are backed by
                    (``vault/built/tiny/<id>``: the whole directory, or only its
                    ``disk.qcow2``) is moved aside.  ``list`` and ``info`` must answer
                    and show every instance as before; ``doctor`` must name the missing
                    base image; ``start`` of an instance whose QEMU is not running must
                    fail with exit 2 saying what is missing and what to do, changing
                    nothing (a suspended one stays suspended).  Then the image is moved
                    back and that ``start`` must work (and the canary read back).
kill-download       an image download is cut off mid-way: ``launch chaos:skiff`` of a
                    spare instance from a loopback HTTP server (the tiny image
                    published in simplestreams format) that stops after half of a
                    file, then either ketchd is ``kill -9``ed (the launch exits 3) or
                    the server closes the connection (exit 2, "nothing was kept").
                    Afterwards no blob in the vault is a half (each one's sha256 is its
                    name), the next launch of the same image works (and sweeps the
                    dead download's ``.part``), and the spare is purged and the
                    download pruned (``image prune --days 0``) so the next injection
                    downloads again.
==================  ==================================================================

Everything here touches only the walk's own root and its own server on 127.0.0.1.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ketch.images.publish import from_image_dir, publish

if TYPE_CHECKING:
    from chaos import Walk

REMOTE = "chaos"
ALIAS = "skiff"
HOLD_TIMEOUT = 180.0  # seconds a held response waits to be released
REACH_TIMEOUT = 240.0  # seconds the walk waits for a download to reach the hold point
AWAY_MODES = ("directory", "disk")
CUT_MODES = ("kill-daemon", "server-closes")


# ---- a loopback image server that stops half-way on request -------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        if owner.hold is None or not path.endswith((".img", ".qcow2", "vmlinuz", "initrd")):
            super().do_GET()
            return
        body = (Path(self.directory) / path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            owner.reached.set()
            hold = owner.hold
            if hold is not None:
                hold.wait(HOLD_TIMEOUT)
            if owner.cut:
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body[len(body) // 2 :])
        except OSError:
            pass  # the client went away: that is the fault


class _Server(http.server.ThreadingHTTPServer):
    owner: ImageServer
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class ImageServer:
    """Serves ``root`` on 127.0.0.1; with :attr:`hold` set, image files stop after half."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hold: threading.Event | None = None
        self.cut = False
        self.reached = threading.Event()
        handler = functools.partial(_Handler, directory=str(root))
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.owner = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def arm(self, *, cut: bool) -> None:
        self.reached.clear()
        self.cut = cut
        self.hold = threading.Event()

    def disarm(self) -> None:
        hold, self.hold = self.hold, None
        if hold is not None:
            hold.set()

    def close(self) -> None:
        self.disarm()
        self._server.shutdown()
        self._server.server_close()


# ---- the faults ----------------------------------------------------------------------


class ImageFaults:
    """The two image fault classes of one walk (``walk``), and what they set up."""

    def __init__(self, walk: Walk) -> None:
        self.walk = walk
        self.tree: Path | None = None
        self.server: ImageServer | None = None
        self.spares = 0

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.tree is not None:
            shutil.rmtree(self.tree, ignore_errors=True)
            self.tree = None

    # -- base-image-away -------------------------------------------------------------------

    def base_dir(self) -> Path | None:
        w = self.walk
        assert w.root is not None
        built = sorted((w.root / "vault" / "built" / "tiny").glob("*/disk.qcow2"))
        return built[0].parent if built else None

    def base_image_away(self) -> bool:
        w = self.walk
        assert w.root is not None
        base = self.base_dir()
        if base is None or not w.instances or w.filler is not None:
            return False
        w.check_list()
        before = dict(w.states)
        mode = w.rng.choice(AWAY_MODES)
        moved = base if mode == "directory" else base / "disk.qcow2"
        aside = w.root / f"chaos-away-{w.step}"
        idle = [
            n
            for n in sorted(w.instances)
            if before.get(n) in ("Stopped", "Suspended") and not w.instances[n].quarantine
        ]
        target = w.rng.choice(idle) if idle else None
        os.rename(moved, aside)
        w.log(f"FAULT moved the base image's {mode} {moved} aside")
        try:
            self._while_away(before, target, moved)
        finally:
            os.rename(aside, moved)
            w.log(f"moved the base image's {mode} back")
        if target is not None:
            res = w.cli("start", target, kind="start")
            w.log(
                f"start {target} (base back) -> rc={res.rc} ({res.seconds:.1f}s) "
                f"{res.first_error_line()}"
            )
            w.after("start", target, res)
            # (exit 5: a boot slower than its timeout, a loaded host's; with nothing
            # to wait for, check_clear has flagged it already)
            if res.rc not in (0, 5):
                w.violate(
                    "base-back-works", f"exit {res.rc}: {res.first_error_line()}", res.command
                )
        return True

    def _while_away(self, before: dict[str, str], target: str | None, moved: Path) -> None:
        w = self.walk
        w.check_list()
        for name in sorted(w.instances):
            if w.states.get(name) != before.get(name) and before.get(name) != "Unknown":
                w.violate(
                    "reads-without-base",
                    f"{name} listed {w.states.get(name)} with the base image away, "
                    f"{before.get(name)} before",
                    "ketch list",
                )
        info = w.cli("info", "--all", "--format", "json", kind="info")
        w.check_clear(info)
        if info.rc != 0:
            w.violate(
                "reads-without-base",
                f"info exit {info.rc}: {info.first_error_line()}",
                info.command,
            )
        doctor = w.cli("doctor", "--format", "json", kind="doctor")
        w.check_clear(doctor)
        try:
            named = {
                f["instance"]
                for f in json.loads(doctor.stdout)["findings"]
                if f["code"] == "missing-base-image"
            }
        except (ValueError, KeyError, TypeError):
            named = set()
        # (a running QEMU holds the image open: doctor checks the disks of the others)
        blind = [
            n
            for n, inst in sorted(w.instances.items())
            if w.states.get(n) in ("Stopped", "Suspended")
            and not w.qemu_running(n)
            and not inst.quarantine
            and n not in named
        ]
        if blind:
            w.violate(
                "doctor-names-missing-base",
                f"doctor does not name the missing base "
                f"image of {blind}: {doctor.stdout.strip()[:300]}",
                doctor.command,
            )
        if target is None:
            return
        res = w.cli("start", target, kind="start")
        w.log(
            f"start {target} (base away) -> rc={res.rc} ({res.seconds:.1f}s) "
            f"{res.first_error_line()}"
        )
        w.check_clear(res)
        said = res.stderr
        if (
            res.rc != 2
            or "base image" not in said
            or str(moved.parent) not in said
            or "doctor --fix" not in said
        ):
            w.violate(
                "start-without-base",
                f"exit {res.rc} (wanted 2, naming the missing base image): {said.strip()[:300]!r}",
                res.command,
            )
        state = w.state_of(target)
        if state != before.get(target):
            w.violate(
                "start-without-base-changes-nothing",
                f"{target} is {state} after the refused start, {before.get(target)} before",
                res.command,
            )
        if w.qemu_running(target):
            w.violate("start-without-base-changes-nothing", f"a QEMU runs {target}'s disk")

    # -- kill-download ----------------------------------------------------------------------

    def _serve(self) -> ImageServer:
        w = self.walk
        if self.server is None:
            self.tree = Path(tempfile.mkdtemp(prefix=f"kchaos-streams-{w.seed}-"))
            product = from_image_dir(w.image_dir, product="com.ketch:skiff:amd64", aliases=(ALIAS,))
            publish(self.tree, [product])
            self.server = ImageServer(self.tree)
            res = w.cli("set", f"local.remote.{REMOTE}={self.server.url}", kind="set")
            if res.rc != 0:
                raise RuntimeError(f"ketch set local.remote.{REMOTE} failed: {res.stderr}")
        return self.server

    def kill_download(self) -> bool:
        w = self.walk
        assert w.root is not None
        if w.filler is not None:
            return False
        if w.daemon_pid() is None:
            w.cli("list", "--format", "json", kind="list")  # a daemon to kill
        server = self._serve()
        how = w.rng.choice(CUT_MODES)
        self.spares += 1
        spare = f"c{w.seed}-dl{self.spares}"
        w.ever.add(spare)
        server.arm(cut=how == "server-closes")
        args = ["launch", f"{REMOTE}:{ALIAS}", "--name", spare, "--memory", w.cfg.memory]
        t0 = time.monotonic()
        proc = subprocess.Popen(
            w._argv(tuple(args)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=w.env,
        )
        try:
            if not server.reached.wait(REACH_TIMEOUT):
                w.violate(
                    "download-starts",
                    f"no image file was half sent in {REACH_TIMEOUT:g} s",
                    " ".join(args),
                )
            elif how == "kill-daemon":
                pid = w.daemon_pid()
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    w.wait_gone(pid)
        finally:
            server.disarm()
        res = w.reap(proc, args, t0, kind="launch (download cut)")
        rc = res.rc
        w.log(
            f"FAULT download of {REMOTE}:{ALIAS} cut off half-way ({how}) -> rc={rc} "
            f"{res.first_error_line()}"
        )
        w.check_clear(res)
        want = 3 if how == "kill-daemon" else 2
        if rc != want:
            w.violate(
                "download-cut-exit", f"exit {rc}, not {want}: {res.first_error_line()}", res.command
            )
        self.check_blobs("after the cut")
        w.check_list()
        if spare in w.states and w.states[spare] != "Deleted":
            w.log(f"{spare} is listed {w.states[spare]} after the cut launch")
        # The same image again: it must download whole and boot.
        w.cli("delete", "--purge", spare, kind="purge (spare, if listed)")
        again = w.cli(*args, kind="launch")
        w.log(
            f"launch {spare} again -> rc={again.rc} ({again.seconds:.1f}s) "
            f"{again.first_error_line()}"
        )
        w.check_clear(again)
        if again.rc == 5:
            w.log(f"{spare} was downloaded and booted but not ready in time (a loaded host)")
        elif again.rc != 0:
            w.violate(
                "download-again-works",
                f"exit {again.rc}: {again.first_error_line()}",
                again.command,
            )
        else:
            ran = w.cli("exec", spare, "--", "true", kind="exec")
            w.check_clear(ran)
            if ran.rc != 0:
                w.violate(
                    "download-again-works",
                    f"exec exit {ran.rc}: {ran.first_error_line()}",
                    ran.command,
                )
        self.check_blobs("after the next launch", parts=True)
        gone = w.cli("delete", "--purge", spare, kind="delete --purge")
        w.after("delete --purge", spare, gone)
        pruned = w.cli("image", "prune", "--days", "0", kind="image prune")
        w.check_clear(pruned)
        if pruned.rc != 0:
            w.violate(
                "prune-works", f"exit {pruned.rc}: {pruned.first_error_line()}", pruned.command
            )
        w.check_list()
        return True

    def check_blobs(self, when: str, *, parts: bool = False) -> None:
        """No blob in the vault is a half: each one's sha256 is its name; no dead ``.part``."""
        w = self.walk
        assert w.root is not None
        vault = w.root / "vault"
        for blob in sorted((vault / "sha256").glob("*")):
            h = hashlib.sha256()
            with blob.open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            if h.hexdigest() != blob.name:
                w.violate(
                    "no-half-image",
                    f"{when}: vault blob {blob.name} holds "
                    f"{blob.stat().st_size} bytes hashing to {h.hexdigest()}",
                )
        if not parts:
            return
        for part in sorted((vault / "tmp").glob("*.part")):
            pid = part.name.split(".")[1] if part.name.count(".") >= 3 else ""
            if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
                w.violate(
                    "no-half-image", f"{when}: {part.name} of a dead process is left in the vault"
                )
