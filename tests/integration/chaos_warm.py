"""The chaos walk's warm-launch faults (``chaos.py`` calls these with its walk; ``--warm``).

A warm walk makes a template of ``tiny`` for its launches' shape (``ketch image
warm tiny --memory MEMORY``) before its first step, so its launches start warm.
The faults:

====================  ============================================================
fault                 what is done
====================  ============================================================
template-damage       one of the template's files is damaged: its memory file cut
                      to half (a new, shorter file), its device state overwritten with garbage or
                      deleted, its golden disk's header overwritten, its record
                      deleted.  The next launch must still give a Running instance
                      (cold, saying why) whose canary holds; a launch that fails
                      says so clearly (the walk's usual checks)
template-away         the whole template directory is removed while instances made
                      from it exist: they must go on (stop, start, suspend, resume)
                      without it
====================  ============================================================

Before each checkpoint a template damaged, removed or pruned (the image faults'
``image prune --days 0``) is made again (``image warm``, which must succeed).
The summary counts launches by how they started (``info``'s ``launched``): a
warm walk whose launches were all cold would test nothing of this.
"""

from __future__ import annotations

import json
import shutil
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chaos import Walk

FAULTS = ("template-damage", "template-away")
WEIGHTS = (4, 2)
DAMAGES = ("memory-cut", "state-garbage", "state-deleted", "disk-garbage", "record-deleted")
RECORD = "template.json"  # ketch.layout's TEMPLATE_RECORD and the files below
FILES = {"memory": "memory.ram", "state": "device.state", "disk": "golden.qcow2"}


@dataclass
class _State:
    damaged_at: int | None = None  # the step of the last damage not yet made good
    launches: Counter[str] = field(default_factory=Counter)  # "warm" / "cold" / "?"
    damages: Counter[str] = field(default_factory=Counter)


_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()


def _state(walk: Walk) -> _State:
    return _STATES.setdefault(walk, _State())


def templates(walk: Walk) -> list[Path]:
    """The walk's template directories (finished or not)."""
    assert walk.root is not None
    base = walk.root / "templates"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def make(walk: Walk, why: str) -> None:
    """``ketch image warm tiny`` for the walk's launches; it must succeed."""
    res = walk.cli("image", "warm", "tiny", "--memory", walk.cfg.memory, kind="image warm",
                   timeout=600)  # fmt: skip
    walk.log(f"image warm tiny ({why}) -> rc={res.rc} ({res.seconds:.1f}s) "
             f"{res.first_error_line()}")  # fmt: skip
    walk.check_clear(res)
    if res.rc != 0:
        walk.violate("template-made", f"image warm failed: {res.first_error_line()}", res.command)


def setup(walk: Walk) -> None:
    make(walk, "before the first step")


def count_launch(walk: Walk, name: str) -> None:
    """Record how ``name`` (just launched) started, from ``info``'s ``launched``."""
    res = walk.cli("info", name, "--format", "json", kind="info")
    try:
        launched = str(json.loads(res.stdout)["info"][name].get("launched", "?"))
    except (ValueError, KeyError, TypeError):
        launched = "?"
    _state(walk).launches[launched.split(" ")[0]] += 1


def do_fault(walk: Walk, fault: str) -> bool:
    """Inject one of :data:`FAULTS`; False when there is no finished template to hit."""
    done = [t for t in templates(walk) if (t / RECORD).exists()]
    if not done:
        return False
    tdir = walk.rng.choice(done)
    st = _state(walk)
    if fault == "template-away":
        shutil.rmtree(tdir)
        walk.log(f"FAULT removed the template {tdir.name} ({len(walk.instances)} instances)")
    elif fault == "template-damage":
        how = walk.rng.choice(DAMAGES)
        _damage(tdir, how)
        st.damages[how] += 1
        walk.log(f"FAULT damaged the template {tdir.name}: {how}")
    else:
        raise ValueError(fault)
    st.damaged_at = walk.step
    return True


def _damage(tdir: Path, how: str) -> None:
    if how == "memory-cut":
        # A new file in its place (the clones that run map the old one privately: cutting
        # that one under them is not a damage a template on disk suffers)
        path = tdir / FILES["memory"]
        cut = path.with_name(path.name + ".cut")
        left = path.stat().st_size // 2
        with path.open("rb") as src, cut.open("wb") as dst:
            while left > 0 and (chunk := src.read(min(left, 2**20))):
                dst.write(chunk)
                left -= len(chunk)
        cut.replace(path)
    elif how == "state-garbage":
        (tdir / FILES["state"]).write_bytes(b"not a migration stream\n" * 64)
    elif how == "state-deleted":
        (tdir / FILES["state"]).unlink()
    elif how == "disk-garbage":
        with (tdir / FILES["disk"]).open("r+b") as f:
            f.write(b"garbage!" * 64)
    elif how == "record-deleted":
        (tdir / RECORD).unlink()
    else:
        raise ValueError(how)


def restore(walk: Walk) -> None:
    """Before a checkpoint: make the template again if a fault hit it, or if none is
    there (the image faults' ``image prune --days 0`` takes templates too)."""
    st = _state(walk)
    if st.damaged_at is not None:
        make(walk, f"after the fault at step {st.damaged_at}")
    elif not any((t / RECORD).exists() for t in templates(walk)):
        make(walk, "none is there (pruned, or a rebuild that failed)")
    st.damaged_at = None


def summary(walk: Walk) -> dict[str, Any]:
    st = _state(walk)
    return {"launches": dict(sorted(st.launches.items())),
            "template_damages": dict(sorted(st.damages.items()))}  # fmt: skip
