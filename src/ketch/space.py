"""Space checked before it runs out: what an operation needs against what is free.

``launch``, ``suspend``, ``snapshot``, ``clone`` and image downloads call
:func:`require` before they write anything, with an estimate of what they
will write (:func:`estimate` says how, per operation, as a pure function):

* launch: a floor for the new disk overlay and its seed (the image itself,
  if it must be fetched, is checked by its download);
* suspend: the guest's memory size, or QEMU's resident memory when that is
  smaller (pages the guest never touched are saved as zero-page markers, so
  the VM state written into its disk is at most what QEMU holds), plus a
  small margin (:data:`MARGIN`);
* snapshot: a floor (an internal snapshot copies the disk's tables, not its
  data);
* clone: the source disk's allocated size (its data are copied), plus the
  floor;
* an image download: the image's size (the catalogue's, else the server's
  Content-Length), plus the floor.

What is free is ``statvfs``'s ``f_bavail`` (what an unprivileged writer may
use).  A refusal is :class:`~ketch.errors.NoSpace` (exit 2) with both
numbers and what to delete; nothing has been written by then.
"""

from __future__ import annotations

import os
from pathlib import Path

from ketch.errors import NoSpace

MiB = 1024**2
FLOOR = 64 * MiB  # a new overlay's first writes, a seed, metadata: never go below this
MARGIN = 16 * MiB  # beside a suspend's VM state: the disk's tables


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem of ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def allocated(path: Path) -> int:
    """Bytes a file takes on disk (its allocated blocks; 0 when absent)."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def estimate(what: str, *, memory: int = 0, size: int = 0) -> tuple[int, str]:
    """(bytes needed, how that was estimated) for ``what``: pure."""
    if what == "suspend":
        return memory + MARGIN, f"its memory in use ({human(memory)}) plus {human(MARGIN)}"
    if what == "clone":
        return size + FLOOR, f"the source disk's data ({human(size)}) plus {human(FLOOR)}"
    if what == "download":
        return size + FLOOR, f"the image ({human(size)}) plus {human(FLOOR)}"
    return FLOOR, f"a floor of {human(FLOOR)} for a new disk's first writes"


def human(n: int) -> str:
    """Bytes as MiB or GiB with one decimal (pure)."""
    if n >= 1024**3:
        return f"{n / 1024**3:.1f} GiB"
    return f"{n / MiB:.1f} MiB"


def refusal(what: str, where: Path, needed: int, how: str, free: int, note: str = "") -> NoSpace:
    """The error for ``what`` refused: both numbers and what to delete (pure)."""
    return NoSpace(
        f"not enough space for {what} in {where}: it needs about {human(needed)} ({how}), "
        f"only {human(free)} free" + (f"; {note}" if note else ""),
        hint="free some space: 'ketch delete --purge' instances you no longer need, "
        "'ketch delete --purge NAME.SNAPSHOT' old snapshots, 'ketch image prune' unused "
        f"images, or other files on the filesystem of {where}",
    )


def require(what: str, where: Path, *, memory: int = 0, size: int = 0, note: str = "") -> None:
    """Refuse ``what`` (launch, suspend, snapshot, clone, download) unless it fits in ``where``."""
    needed, how = estimate(what, memory=memory, size=size)
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = free_bytes(probe)
    if free < needed:
        raise refusal(what, where, needed, how, free, note)
