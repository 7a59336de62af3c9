"""Is each mount of a running instance in place?  The looks ``list``, ``info`` and ``doctor`` share.

:func:`host_problems` is cheap (no guest is asked: a stat, pid files and
/proc), so every :func:`~ketch.service.inspect.view` makes it, and ``list``
shows its findings as inconsistencies: a source that vanished
(``mount-source-missing``), a classic mount's SFTP side dead or serving a
directory since replaced, a native mount's virtiofsd dead (``mount-dead``).
:func:`guest_problems` adds what only the guest can say (its side gone),
from the ``active`` flags ``info`` already asks the guest for;
``info`` and ``doctor`` show both.  Only an instance that runs, with no
operation on it, is expected to have its mounts in place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ketch.layout import InstanceDir
from ketch.model import Inconsistency, InconsistencyCode, InstanceSpec, MountSpec, MountType
from ketch.runtime import virtiofs
from ketch.service import mounts_classic

IC = InconsistencyCode


def _dead(name: str, mount: MountSpec, why: str, action: str) -> Inconsistency:
    return Inconsistency(
        IC.MOUNT_DEAD,
        f"the {mount.type.value} mount {mount.source} => {mount.target} is not in place: {why}",
        action,
        mount=mount.target,
    )


def host_problem(idir: InstanceDir, spec: InstanceSpec, mount: MountSpec) -> Inconsistency | None:
    """What is wrong with one mount that the host can see (None: nothing)."""
    name = spec.name
    if not os.path.isdir(mount.source):
        return Inconsistency(
            IC.MOUNT_SOURCE_MISSING,
            f"the source {mount.source} of the mount {mount.target} no longer exists",
            f"recreate it (then 'ketch doctor --fix {name}' mounts it again), "
            f"or 'ketch umount {name}:{mount.target}'",
            mount=mount.target,
        )
    if mount.type is MountType.CLASSIC:
        why = mounts_classic.host_side(idir, mount)
        return (
            None if why is None else _dead(name, mount, why, "'ketch doctor --fix' mounts it again")
        )
    if not virtiofs.running(idir, mount):
        return _dead(
            name,
            mount,
            "its virtiofsd is not running (a native mount's device is attached as the "
            "instance starts)",
            f"'ketch restart {name}' attaches it again",
        )
    return None


def host_problems(idir: InstanceDir, spec: InstanceSpec) -> tuple[Inconsistency, ...]:
    """Every host-side problem of the mounts of an instance that runs."""
    found = (host_problem(idir, spec, m) for m in spec.mounts)
    return tuple(p for p in found if p is not None)


def guest_problems(
    spec: InstanceSpec,
    active: Mapping[str, bool | None],
    known: Sequence[Inconsistency],
) -> list[Inconsistency]:
    """Mounts whose host side is fine (nothing in ``known`` about them) but that the
    guest does not have mounted (``active`` False)."""
    said = {i.mount for i in known if i.mount is not None}
    return [
        _dead(
            spec.name,
            m,
            "the guest no longer has it mounted",
            "'ketch doctor --fix' mounts it again",
        )
        for m in spec.mounts
        if m.target not in said and active.get(m.target) is False
    ]
