"""Use cases: ``ketch host add``, ``host list``, ``host remove``: the hosts instances run on.

The built-in host ``local`` is ketch's own QEMU driver on the daemon's machine; it is
never stored and cannot be removed.  Every other host is a libvirtd, reached by its URI
(:mod:`ketch.libvirt_uri`), and stored as the user gave it (:class:`~ketch.model.HostSpec`,
the ``hosts`` table).  An instance's host is in its spec (``InstanceSpec.host``), so a
host's instances are counted from the store and a host that has any is not removed.

Nothing observed is stored: ``host list`` probes every host now, all at once, each within
the timeout (:class:`ketch.host.libvirt.Prober`), and shows a host that does not answer as
unreachable with the reason, without waiting for it longer than that.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import time

from ketch import libvirt_uri
from ketch.api.models import HostAddReply, HostListReply, HostRemoveReply, HostRow
from ketch.errors import AlreadyExists, HostInUse, InvalidArgument, InvalidHost, KetchError
from ketch.host import libvirt_ssh
from ketch.host.libvirt import NodeFacts
from ketch.host.node import local_facts
from ketch.layout import Root
from ketch.model import LOCAL_HOST, HostDriver, HostSpec, HostState
from ketch.service import names
from ketch.service.context import Context


def check_name(name: str) -> str:
    """A host name follows the instance names' rules; ``local`` is taken."""
    if name == LOCAL_HOST:
        raise AlreadyExists(
            f'"{LOCAL_HOST}" is the built-in host (ketch\'s own QEMU driver)',
            hint="choose another name for the libvirt host",
        )
    try:
        return names.validate(name, "host")
    except InvalidArgument as exc:  # refused by the daemon: exit 2, as Multipass's
        raise InvalidHost(exc.message, hint=exc.hint) from exc


def check_key(path: str) -> str:
    """``--ssh-key``: an absolute path of a readable regular file on the daemon's machine."""
    if any(c in path for c in '"\\') or any(ord(c) < 32 for c in path):
        raise InvalidHost(
            f"--ssh-key {path!r}: quotes, backslashes and control characters are not taken",
            hint="ssh_config cannot say such a path; move or link the key",
        )
    if not os.path.isabs(path):
        raise InvalidHost(
            f"--ssh-key {path}: not an absolute path", hint="give the key's full path"
        )
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InvalidHost(
            f"--ssh-key {path}: {exc.strerror}",
            hint="the key must be on the machine ketchd runs on, readable by it",
        ) from exc
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.R_OK):
        raise InvalidHost(f"--ssh-key {path}: not a readable file", hint="give a private key")
    return path


def check_known_hosts(text: str) -> str:
    """``--known-hosts``: at least one ``HOST KEYTYPE KEY`` line (comments aside)."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines or any(len(fields) < 3 for fields in lines):
        raise InvalidHost(
            "--known-hosts: not a known_hosts file (each line: HOST KEYTYPE KEY)",
            hint="e.g. the host's line from ~/.ssh/known_hosts, or ssh-keyscan's output "
            "checked against the host's own key",
        )
    return text


def connect_uri(root: Root, host: HostSpec) -> str:
    """The URI libvirt opens: a ``qemu+ssh://`` one runs ssh through the host's wrapper."""
    parsed = libvirt_uri.parse(host.uri)
    if not parsed.remote:
        return parsed.text()
    try:
        wrapper = libvirt_ssh.write(root.host_dir(host.name), host.ssh_key, host.known_hosts)
    except OSError as exc:
        raise KetchError(
            f'cannot write the SSH files of host "{host.name}": {exc}',
            hint=f"check {root.host_dir(host.name)} (ketchd writes it)",
        ) from exc
    return parsed.text({"command": str(wrapper)})


def _counts(ctx: Context) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in ctx.store.all():
        counts[record.spec.host] = counts.get(record.spec.host, 0) + 1
    return counts


def _row(
    name: str, driver: HostDriver, uri: str, count: int, started: float,
    facts: NodeFacts | None, why: str,
) -> HostRow:  # fmt: skip
    return HostRow(
        name=name,
        driver=driver.value,
        uri=uri,
        state=HostState.REACHABLE.value if facts is not None else HostState.UNREACHABLE.value,
        reason=why,
        instances=count,
        cpus=None if facts is None else facts.cpus,
        memory_total=None if facts is None else facts.memory_total,
        memory_free=None if facts is None else facts.memory_free,
        disk_free=None if facts is None else facts.disk_free,
        disk_pool=None if facts is None else facts.disk_pool,
        libvirt_version=None if facts is None else facts.libvirt_version,
        probe_seconds=round(time.monotonic() - started, 3),
        arch=None if facts is None else facts.arch,
    )


async def _probe(ctx: Context, host: HostSpec, count: int, timeout: float) -> HostRow:
    started = time.monotonic()
    try:
        facts = await ctx.prober.probe(connect_uri(ctx.root, host), timeout)
    except KetchError as exc:
        why = exc.message + (f" ({exc.hint})" if exc.hint else "")
        return _row(host.name, HostDriver.LIBVIRT, host.uri, count, started, None, why)
    return _row(host.name, HostDriver.LIBVIRT, host.uri, count, started, facts, "")


async def _local(ctx: Context, count: int) -> HostRow:
    started = time.monotonic()
    try:
        facts = await asyncio.to_thread(local_facts, ctx.root.path)
    except OSError as exc:
        return _row(LOCAL_HOST, HostDriver.QEMU, "", count, started, None, str(exc))
    return _row(LOCAL_HOST, HostDriver.QEMU, "", count, started, facts, "")


async def listing(ctx: Context, timeout: float) -> HostListReply:
    """Every host, ``local`` first, each probed now (at once; each within ``timeout``)."""
    counts = _counts(ctx)
    hosts = ctx.store.hosts()
    rows = await asyncio.gather(
        _local(ctx, counts.get(LOCAL_HOST, 0)),
        *(_probe(ctx, h, counts.get(h.name, 0), timeout) for h in hosts),
    )
    return HostListReply(list=list(rows))


async def add(
    ctx: Context,
    name: str,
    uri: str,
    *,
    ssh_key: str | None = None,
    known_hosts: str | None = None,
    timeout: float,
) -> HostAddReply:
    """Check and store a host, then probe it once (it is kept even when unreachable)."""
    check_name(name)
    parsed = libvirt_uri.parse(uri)
    if not parsed.remote and (ssh_key is not None or known_hosts is not None):
        raise InvalidHost(
            f"{uri} is this machine's libvirtd, reached without ssh",
            hint="--ssh-key and --known-hosts are for qemu+ssh:// hosts",
        )
    spec = HostSpec(
        name=name,
        uri=parsed.text(),
        ssh_key=None if ssh_key is None else check_key(ssh_key),
        known_hosts=None if known_hosts is None else check_known_hosts(known_hosts),
        created=time.time(),
    )
    for other in ctx.store.hosts():
        if other.uri == spec.uri:
            raise AlreadyExists(
                f'{spec.uri} is already host "{other.name}"',
                hint=f"one host per libvirtd: 'ketch host remove {other.name}' first",
            )
    ctx.store.add_host(spec)
    return HostAddReply(host=await _probe(ctx, spec, _counts(ctx).get(name, 0), timeout))


def remove(ctx: Context, name: str) -> HostRemoveReply:
    """Forget a host and its SSH files; refused while any instance is on it."""
    if name == LOCAL_HOST:
        raise InvalidHost(
            f'"{LOCAL_HOST}" is the built-in host (ketch\'s own QEMU driver): it cannot be removed',
            hint="remove libvirt hosts only; see 'ketch host list'",
        )
    ctx.store.get_host(name)  # NotFound
    on_it = sorted(r.spec.name for r in ctx.store.all() if r.spec.host == name)
    if on_it:
        n = len(on_it)
        raise HostInUse(
            f'host "{name}" has {n} instance{"s" if n != 1 else ""}: {", ".join(on_it)}',
            hint="delete --purge them (or move them) first",
        )
    ctx.store.remove_host(name)
    if ctx.drivers is not None:
        ctx.drivers.forget(name)
    shutil.rmtree(ctx.root.host_dir(name), ignore_errors=True)
    return HostRemoveReply(name=name)
