"""The chaos walk's mount faults and mount invariants (``chaos.py`` calls these with its walk).

Half the instances a walk launches get a classic mount (``launch --mount``) of a
share of their own, outside the walk's tmpfs (``<root>-shares/NAME``), holding
``hello.txt``.  The faults:

====================  ============================================================
fault                 what is done
====================  ============================================================
kill-mount-host       ``kill -9`` of a running instance's mount supervisor (the SFTP
                      server and its ssh die with it); ``info`` must show
                      ``mount-dead`` (the daemon keeps running: nothing restarts it),
                      the next checkpoint's ``doctor --fix`` must mount it again
mount-source-gone     an instance's share is removed; when it runs, ``info`` must show
                      ``mount-source-missing``; the share is made again (the same
                      file) after the next step or before a checkpoint, whichever
                      is first: the server then serves a removed directory, which
                      ``doctor --fix`` must replace
suspend-with-mounts   ``suspend`` then ``start`` of a running instance with a mount;
                      both succeed (or fail with a clear message) and the share's
                      file reads back in the guest
====================  ============================================================

Invariants (:func:`reality`, at every checkpoint, and :func:`teardown`): a
mount's host side (an SFTP supervisor, a virtiofsd) runs only for an instance
whose QEMU runs, and none is left once everything is purged.  After ``doctor
--fix`` a Running instance's mounts are in place: ``info`` shows no
``mount-*`` inconsistency (the walk's ``consistent-after-doctor`` check).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chaos import Walk

FAULTS = ("kill-mount-host", "mount-source-gone", "suspend-with-mounts")
# Their weights beside chaos.FAULT_WEIGHTS' (12 for kill-qemu); KETCH_CHAOS_MOUNT_WEIGHT
# multiplies them (a walk that looks at mounts above all).
_SCALE = float(os.environ.get("KETCH_CHAOS_MOUNT_WEIGHT") or 1)
WEIGHTS = tuple(max(1, round(w * _SCALE)) for w in (6, 4, 4))
TARGET = "/mnt/chaos"
MOUNTED_SHARE = 0.5  # the share of launches that get a mount


@dataclass
class _State:
    shares: dict[str, Path] = field(default_factory=dict)  # instance -> its share
    gone: dict[str, int] = field(default_factory=dict)  # share removed -> at which step


_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()


def _state(walk: Walk) -> _State:
    return _STATES.setdefault(walk, _State())


def _content(name: str) -> str:
    return f"share of {name}\n"


def _make_share(path: Path, name: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "hello.txt").write_text(_content(name))


def launch_args(walk: Walk, name: str) -> list[str]:
    """``--mount SHARE:/mnt/chaos`` for about half the launches (else nothing)."""
    if walk.root is None or walk.rng.random() >= MOUNTED_SHARE:
        return []
    share = Path(f"{walk.root}-shares") / name
    _make_share(share, name)
    _state(walk).shares[name] = share
    return ["--mount", f"{share}:{TARGET}"]


# -- processes (this walk's root only) ---------------------------------------------------------


def _cmdline(pid: str) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]


def supervisors(root: Path) -> dict[str, list[int]]:
    """Instance name -> pids of its classic mounts' supervisors (and servers: forks of them)."""
    mark = f"{root}/instances/"
    found: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _cmdline(entry)
        if len(argv) < 3 or argv[1:3] != ["-m", "ketch.host.sftp"] or "--pidfile" not in argv:
            continue
        pidfile = argv[argv.index("--pidfile") + 1]
        if pidfile.startswith(mark):
            found.setdefault(pidfile[len(mark) :].split("/")[0], []).append(int(entry))
    return found


def virtiofsds(root: Path) -> dict[str, list[int]]:
    """Instance name -> pids of virtiofsd processes serving a socket of its directory."""
    want = f"KETCH_VIRTIOFS_SOCKET={root}/instances/"
    found: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        argv = _cmdline(entry) if entry.isdigit() else []
        if not argv or Path(argv[0]).name != "virtiofsd":
            continue
        with contextlib.suppress(OSError):
            for var in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                text = var.decode(errors="replace")
                if text.startswith(want):
                    found.setdefault(text[len(want) :].split("/")[0], []).append(int(entry))
    return found


def _ours(walk: Walk, pid: int, name: str) -> bool:
    assert walk.root is not None
    return pid in supervisors(walk.root).get(name, [])


# -- faults ------------------------------------------------------------------------------------


def do_fault(walk: Walk, fault: str) -> bool:
    """Inject one of :data:`FAULTS`; False when no instance is in a state it applies to."""
    assert walk.root is not None
    if fault == "kill-mount-host":
        return _kill_host(walk)
    if fault == "mount-source-gone":
        return _source_gone(walk)
    if fault == "suspend-with-mounts":
        return _suspend_resume(walk)
    raise ValueError(fault)


def _running_with_share(walk: Walk) -> list[str]:
    st = _state(walk)
    return [
        n
        for n in sorted(walk.instances)
        if n in st.shares and walk.states.get(n) == "Running" and walk.qemu_running(n)
    ]


def _codes(walk: Walk, name: str) -> dict[str, str] | None:
    """``info``'s inconsistencies of ``name`` (code -> message), None when info fails."""
    import json

    res = walk.cli("info", name, "--format", "json", kind="info")
    walk.check_clear(res)
    try:
        entry = json.loads(res.stdout)["info"][name]
    except (ValueError, KeyError, TypeError):
        return None
    if entry.get("state") != "Running":
        return None
    return {i["code"]: i["message"] for i in entry.get("inconsistencies", [])}


def _kill_host(walk: Walk) -> bool:
    assert walk.root is not None
    sups = supervisors(walk.root)
    names = [n for n in _running_with_share(walk) if sups.get(n)]
    if not names:
        return False
    name = walk.rng.choice(names)
    daemon = walk.daemon_pid()
    for pid in sups[name]:
        if _ours(walk, pid, name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    walk.log(f"FAULT kill -9 the mount supervisor(s) {sups[name]} of {name}")
    if daemon is not None and walk.daemon_pid() == daemon:
        # the daemon that saw the mount keeps running: nothing restarts it before info looks
        codes = _codes(walk, name)
        if codes is not None and "mount-dead" not in codes:
            walk.violate(
                "mount-dead-shown",
                f"{name}'s mount supervisor was killed but info shows {sorted(codes)}",
                f"ketch info {name}",
            )
    return True


def _source_gone(walk: Walk) -> bool:
    st = _state(walk)
    names = [n for n in sorted(walk.instances) if n in st.shares and n not in st.gone]
    if not names:
        return False
    name = walk.rng.choice(names)
    running = name in _running_with_share(walk)
    shutil.rmtree(st.shares[name])
    st.gone[name] = walk.step
    walk.log(f"FAULT removed {name}'s share {st.shares[name]} ({'running' if running else 'idle'})")
    if running:
        codes = _codes(walk, name)
        if codes is not None and "mount-source-missing" not in codes:
            walk.violate(
                "mount-source-missing-shown",
                f"{name}'s share was removed but info shows {sorted(codes)}",
                f"ketch info {name}",
            )
    return True


def restore(walk: Walk, *, all_of_them: bool = False) -> None:
    """Make again the shares removed before this step (all of them: before a checkpoint)."""
    st = _state(walk)
    for name, step in sorted(st.gone.items()):
        if all_of_them or walk.step > step:
            _make_share(st.shares[name], name)
            del st.gone[name]
            walk.log(f"made {name}'s share again")


def _suspend_resume(walk: Walk) -> bool:
    names = _running_with_share(walk)
    if not names:
        return False
    name = walk.rng.choice(names)
    walk.log(f"FAULT suspend and resume {name} with its mount")
    res = walk.cli("suspend", name, kind="suspend")
    walk.after("suspend", name, res)
    if res.rc != 0:
        return True
    res = walk.cli("start", name, kind="start")
    walk.after("start", name, res)
    if res.rc != 0 or name in _state(walk).gone:
        return True
    read = walk.cli("exec", name, "--", "cat", f"{TARGET}/hello.txt", kind="exec")
    walk.check_clear(read)
    if read.rc != 0 or read.stdout != _content(name):
        walk.violate(
            "mount-after-resume",
            f"{TARGET}/hello.txt in {name} after suspend/resume: rc={read.rc} "
            f"{read.stdout[:80]!r} {read.first_error_line()}",
            read.command,
        )
    return True


# -- invariants --------------------------------------------------------------------------------


def reality(walk: Walk, entries: dict[str, Any]) -> None:
    """A mount's host side runs only for an instance whose QEMU runs."""
    assert walk.root is not None
    for kind, found in (("SFTP supervisor", supervisors(walk.root)),
                        ("virtiofsd", virtiofsds(walk.root))):  # fmt: skip
        for name, pids in sorted(found.items()):
            if not walk.qemu_running(name):
                state = entries.get(name, {}).get("state", "not an instance")
                walk.violate(
                    "reality", f"a mount's {kind} {pids} runs for {name}, which is {state}"
                )


def teardown(walk: Walk) -> None:
    """After the final purge nothing of a mount is left; then end what is, remove the shares."""
    if walk.root is None:
        return
    left = {**supervisors(walk.root), **virtiofsds(walk.root)}
    if walk.purged_all and left:
        walk.violate("purge-all", f"mount processes left after purging everything: {left}")
    for name, pids in left.items():
        for pid in pids:
            if _ours(walk, pid, name) or pid in virtiofsds(walk.root).get(name, []):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    shutil.rmtree(f"{walk.root}-shares", ignore_errors=True)
