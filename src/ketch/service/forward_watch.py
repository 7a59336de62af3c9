"""ketchd's port forwarder: a watcher per running instance, QEMU's own forwards as the truth.

One supervisor task (:meth:`Forwarder.run`) looks at the store twice a second
and keeps one watcher task per instance recorded as running: started when an
instance starts, resumes or restarts (or when a new ketchd finds it running),
ended when it stops or suspends, started again when it died.  Nothing else
waits for it: ``list``, ``info`` and ``stop`` read the table it keeps and never
block on it.

A watcher (:meth:`Forwarder._watch`) first reads the forwards QEMU has (HMP
``info usernet``): after a ``kill -9`` of ketchd they are still there, and the
new daemon takes them back from QEMU, not from memory.  It adds the explicit
forwards of the spec that are missing, then opens one SSH session in which the
guest prints its listening sockets every half second
(:mod:`ketch.runtime.listeners`) and, on each snapshot, adds a forward for each
new listener and removes those whose listener is gone.  Forwards are made with
QEMU's ``hostfwd_add``: the bytes never pass through ketchd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import replace
from typing import TYPE_CHECKING

from ketch.errors import HostCommandError, KetchError, NotFound
from ketch.host.hostfwd import HostFwd
from ketch.host.ssh import session
from ketch.model import LOCAL_HOST, ForwardSpec, InstanceSpec, Intent, PidStatus, Protocol
from ketch.runtime import listeners as ls
from ketch.runtime.driver import HostForwarding
from ketch.service.forward_table import (
    AUTOMATIC,
    EXPLICIT,
    SSH_GUEST_PORT,
    Row,
    Status,
    any_free_port,
    as_hostfwd,
    choose_port,
    matches,
    not_forwarded,
    port_free,
)

if TYPE_CHECKING:
    from ketch.service.context import Context

log = logging.getLogger("ketchd.forward")

SUPERVISE_PERIOD = 0.5  # seconds between two looks at the store
RETRY = 1.0  # seconds before a watcher tries again (no QEMU, no SSH yet, session ended)
MAX_RETRY = 8.0  # ... doubling, up to this, while it keeps failing
RESYNC_EVERY = 20  # snapshots (about 10 s) between two reads of QEMU's forwards in a session
MAX_AUTO = 64  # automatic forwards per instance (the guest decides how many it listens on)


class Forwarder:
    """The daemon's forward table and the tasks that keep it true."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.status: dict[str, Status] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._reserved: set[int] = set()  # chosen, being added: no other watcher takes it
        self._locks: dict[str, asyncio.Lock] = {}
        self.closing = False  # ketchd is ending: the instances (and their ssh masters) go on

    @property
    def driver(self) -> HostForwarding | None:
        d = self.ctx.driver
        return d if isinstance(d, HostForwarding) else None

    def lock(self, name: str) -> asyncio.Lock:
        """Serializes one instance's changes to its forwards (watcher and commands)."""
        return self._locks.setdefault(name, asyncio.Lock())

    # -- the supervisor ---------------------------------------------------------------

    async def run(self) -> None:
        """Keep one watcher per running instance, forever (cancel to end them all)."""
        try:
            while True:
                try:
                    self.supervise()
                except Exception:  # the store may be busy: look again next time
                    log.exception("forward supervisor")
                await asyncio.sleep(SUPERVISE_PERIOD)
        finally:
            self.closing = True
            for task in self.tasks.values():
                task.cancel()
            if self.tasks:
                await asyncio.wait(list(self.tasks.values()), timeout=10)

    def supervise(self) -> None:
        """Start the missing (or dead) watchers, end those of instances not running."""
        if self.driver is None:
            return
        wanted = {
            r.spec.name
            for r in self.ctx.store.all()
            if r.intent is Intent.RUN
            and not r.deleted
            and not r.quarantine
            and r.spec.host == LOCAL_HOST  # the QEMU driver's forwards: local instances only
        }
        for name in list(self.tasks):
            if name not in wanted:
                self.tasks.pop(name).cancel()
                self.status.pop(name, None)
        for name in wanted:
            task = self.tasks.get(name)
            if task is None or task.done():
                if task is not None and not task.cancelled() and task.exception():
                    log.warning("forward watcher of %s died: %r", name, task.exception())
                self.tasks[name] = asyncio.create_task(self._watch(name), name=f"forward:{name}")

    # -- one watcher --------------------------------------------------------------------

    async def _watch(self, name: str) -> None:
        from ketch.service import guestlink

        try:
            await self._watch_loop(name)
        finally:  # the instance is no longer running: nor is its master (kept when ketchd ends)
            if not self.closing:
                await guestlink.end_master(self.ctx.root, name)

    async def _watch_loop(self, name: str) -> None:
        from ketch.service import guestlink

        st = self.status.setdefault(name, Status())
        delay = RETRY
        while True:
            try:
                spec = self.ctx.store.get(name).spec
            except NotFound:
                return
            idir = self.ctx.root.instance(name)
            obs = await self.ctx.driver.observe(spec, idir, probe_qmp=False)
            if obs.pid_status is not PidStatus.OURS:
                st.pid, st.active, st.watching, st.guest_ipv4 = None, {}, False, None
                if name not in self.ctx.active:  # its QEMU died: so did the master's connection
                    await guestlink.end_master(self.ctx.root, name)
                await asyncio.sleep(RETRY)
                continue
            try:
                async with self.lock(name):
                    await self.sync(name, spec, pid=obs.pid)
                if name not in self.ctx.active:  # made again if it was killed or is stale
                    await guestlink.ensure_master(self.ctx.root, spec)
                if name in self.ctx.active:
                    pass  # booting (launch, start): the session waits until the guest is ready
                elif self.auto_enabled(name):
                    if await self._session(name, spec):
                        delay = RETRY
                    else:  # ssh failed before the guest printed anything
                        await asyncio.sleep(delay - RETRY)
                        delay = min(delay * 2, MAX_RETRY)
                else:
                    async with self.lock(name):
                        await self._reconcile(name, spec, frozenset(), enabled=False)
            except KetchError as exc:
                log.info("forwards of %s: %s (again in %g s)", name, exc.message, delay)
                await asyncio.sleep(delay - RETRY)
                delay = min(delay * 2, MAX_RETRY)  # a monitor or guest that keeps failing
            except Exception:  # a bug must not spin: the same back-off (never CancelledError)
                log.exception("forward watcher of %s", name)
                await asyncio.sleep(delay - RETRY)
                delay = min(delay * 2, MAX_RETRY)
            st.watching, st.guest_ipv4 = False, None
            await asyncio.sleep(RETRY)

    def auto_enabled(self, name: str) -> bool:
        from ketch.service.forwards import auto_forward

        return auto_forward(self.ctx, name)

    async def _session(self, name: str, spec: InstanceSpec) -> bool:
        """Follow the guest's listeners until the session ends; True if it showed any."""
        from ketch.service.guestlink import ensure_master, live_control, target

        st = self.status.setdefault(name, Status())
        idir = self.ctx.root.instance(name)
        seen, count = False, 0
        reader = ls.SnapshotReader()
        out = session.lines(target(self.ctx.root, spec), ls.WATCH_SCRIPT, max_line=ls.MAX_LINE)
        async with contextlib.aclosing(out):  # the ssh process ends with the session
            async for line in out:
                snap = reader.feed(line)
                if snap is None:
                    continue
                st.watching = seen = True
                st.guest_ipv4 = snap.addresses
                spec = self.ctx.store.get(name).spec
                enabled = self.auto_enabled(name)
                count += 1
                async with self.lock(name):
                    if count % RESYNC_EVERY == 0:  # retry refused rules; see hand-made changes
                        await self.sync(name, spec, pid=st.pid)
                    await self._reconcile(name, spec, snap.listeners, enabled=enabled)
                if not enabled:
                    break
                if not live_control(idir):  # gone, or its socket replaced: made again
                    await ensure_master(self.ctx.root, spec)  # (ends this session if on it)
        return seen

    async def sync(self, name: str, spec: InstanceSpec, *, pid: int | None) -> None:
        """Read the VM's forwards back from QEMU; add the spec's explicit ones it lacks.

        (Called with the instance's forward lock held.)
        """
        driver = self.driver
        if driver is None:
            return
        st = self.status.setdefault(name, Status())
        idir = self.ctx.root.instance(name)
        current = await driver.forwards(spec, idir)
        old = st.active
        st.pid, st.active = pid, {}
        for fwd in current:
            if fwd.protocol is Protocol.TCP and fwd.host_port == spec.ssh_port:
                continue  # ketch's own SSH forward, in QEMU's argv
            kind = EXPLICIT if any(matches(f, fwd) for f in spec.forwards) else AUTOMATIC
            before = old.get(fwd.key)
            note = before.note if before else ""
            if before is None and kind == AUTOMATIC and fwd.host_port != fwd.guest_port:
                note = f"read back from QEMU: host port {fwd.guest_port} was not to be had"
            st.active[fwd.key] = Row(
                fwd.protocol, fwd.host_ip, fwd.host_port, fwd.guest_port, kind,
                before.guest_address if before else "", True, note,
            )  # fmt: skip
        for f in spec.forwards:
            # QEMU refused (a host port taken): noted in st.refused, tried again at the next sync
            with contextlib.suppress(HostCommandError):
                await self.apply_explicit(name, spec, f)

    async def apply_explicit(self, name: str, spec: InstanceSpec, f: ForwardSpec) -> None:
        """Make the explicit forward ``f`` in the running VM (lock held); a failure is noted."""
        driver = self.driver
        st = self.status.setdefault(name, Status())
        fwd = as_hostfwd(f)
        key = ("explicit", f.protocol, f.host_port)
        have = st.active.get(fwd.key)
        if have is not None and have.kind == EXPLICIT and have.guest_port == f.guest_port:
            st.refused.pop(key, None)
            return
        if driver is None:
            return
        idir = self.ctx.root.instance(name)
        if have is not None:  # an automatic forward holds the port: the rule wins
            await driver.remove_forward(spec, idir, fwd)
            st.active.pop(fwd.key, None)
        try:
            await driver.add_forward(spec, idir, fwd)
        except KetchError as exc:
            st.refused[key] = Row(
                f.protocol, f.host_ip, None, f.guest_port, EXPLICIT, "", False,
                f"not forwarded: {f.host_ip}:{f.host_port} could not be bound ({exc.message})",
            )  # fmt: skip
            raise
        st.refused.pop(key, None)
        st.active[fwd.key] = Row(
            f.protocol, f.host_ip, f.host_port, f.guest_port, EXPLICIT, "", True
        )

    async def remove_explicit(self, name: str, spec: InstanceSpec, f: ForwardSpec) -> None:
        """Remove the explicit forward ``f`` from the running VM (lock held)."""
        driver = self.driver
        st = self.status.setdefault(name, Status())
        st.refused.pop(("explicit", f.protocol, f.host_port), None)
        fwd = as_hostfwd(f)
        if driver is not None and fwd.key in st.active:
            await driver.remove_forward(spec, self.ctx.root.instance(name), fwd)
            st.active.pop(fwd.key, None)

    def _taken(self) -> set[int]:
        taken = set(self.ctx.store.used_ports()) | self._reserved
        for r in self.ctx.store.all():
            taken |= {f.host_port for f in r.spec.forwards}
        for st in self.status.values():
            taken |= {key[2] for key in st.active}
        return taken

    async def _reconcile(
        self, name: str, spec: InstanceSpec, found: frozenset[ls.Listener], *, enabled: bool
    ) -> None:
        """Make the automatic forwards match the guest's listeners (lock held)."""
        driver = self.driver
        if driver is None:
            return
        st = self.status.setdefault(name, Status())
        idir = self.ctx.root.instance(name)
        explicit = {(f.protocol, f.guest_port) for f in spec.forwards}
        want: dict[tuple[Protocol, int], ls.Listener] = {}
        refused: dict[tuple[str, Protocol, int], Row] = {
            k: v for k, v in st.refused.items() if k[0] == "explicit"
        }
        for key, one in ls.reachable(found).items() if enabled else ():
            if key in explicit:
                continue
            why = not_forwarded(one)
            if why is None:
                want[key] = one
            elif one.port != SSH_GUEST_PORT or one.protocol is not Protocol.TCP:
                refused[("auto", *key)] = Row(
                    one.protocol, "", None, one.port, AUTOMATIC, one.address, False,
                    f"not forwarded: {why}",
                )  # fmt: skip
        for fkey, frow in list(st.active.items()):
            if frow.kind == AUTOMATIC and (frow.protocol, frow.guest_port) not in want:
                fwd = HostFwd(frow.protocol, frow.host_ip, frow.host_port or 0, frow.guest_port)
                await driver.remove_forward(spec, idir, fwd)
                st.active.pop(fkey, None)
                log.info("%s: removed forward %s -> %s", name, fkey, frow.guest_port)
        have = {(r.protocol, r.guest_port): r for r in st.active.values() if r.kind == AUTOMATIC}
        for key, one in sorted(want.items()):
            if key in have:
                if not have[key].guest_address:
                    row = replace(have[key], guest_address=one.address)
                    st.active[(key[0], row.host_ip, row.host_port or 0)] = row
                continue
            if len(have) >= MAX_AUTO:
                refused[("auto", *key)] = Row(
                    one.protocol, "", None, one.port, AUTOMATIC, one.address, False,
                    f"not forwarded: more than {MAX_AUTO} ports already forwarded automatically",
                )  # fmt: skip
                continue
            added = await self._add_auto(name, spec, one)
            if added is None:
                refused[("auto", *key)] = Row(
                    one.protocol, "", None, one.port, AUTOMATIC, one.address, False,
                    "not forwarded: QEMU could not bind a host port for it",
                )  # fmt: skip
            else:
                have[key] = added
        st.refused = refused

    async def _add_auto(self, name: str, spec: InstanceSpec, one: ls.Listener) -> Row | None:
        driver = self.driver
        assert driver is not None
        idir = self.ctx.root.instance(name)
        st = self.status.setdefault(name, Status())
        for attempt in range(3):
            taken = self._taken()
            first = attempt == 0  # QEMU refused the port a try chose: any free one next

            def is_free(p: int, first: bool = first) -> bool:
                return first and port_free(one.protocol, "127.0.0.1", p)

            def pick(taken: set[int] = taken) -> int:
                return any_free_port(one.protocol, taken)

            port, note = choose_port(
                one.port, taken=taken, privileged_ok=os.geteuid() == 0, is_free=is_free, pick=pick
            )
            self._reserved.add(port)
            try:
                fwd = HostFwd(one.protocol, "127.0.0.1", port, one.port)
                await driver.add_forward(spec, idir, fwd)
            except KetchError as exc:
                log.info("%s: forwarding %s/%s from %d: %s", name, one.port, one.protocol, port,
                         exc.message)  # fmt: skip
                continue
            finally:
                self._reserved.discard(port)
            row = Row(one.protocol, "127.0.0.1", port, one.port, AUTOMATIC, one.address, True, note)
            st.active[fwd.key] = row
            log.info("%s: forwarded 127.0.0.1:%d -> %s/%d", name, port, one.protocol, one.port)
            return row
        return None

    # -- what info shows --------------------------------------------------------------

    def guest_addresses(self, name: str, pid: int | None) -> tuple[str, ...] | None:
        """The IPv4 addresses the guest of QEMU ``pid`` showed last; None if not known now."""
        st = self.status.get(name)
        if st is None or not st.watching or pid is None or st.pid != pid:
            return None
        return st.guest_ipv4

    def rows(self, spec: InstanceSpec, *, running: bool) -> list[Row]:
        """The instance's forwards: active ones, then those that could not be made."""
        st = self.status.get(spec.name)
        if not running or st is None or st.pid is None:
            note = "made when the instance runs" if not running else "not made yet"
            return [
                Row(f.protocol, f.host_ip, f.host_port, f.guest_port, EXPLICIT, "", False, note)
                for f in spec.forwards
            ]
        rows = sorted(st.active.values(), key=lambda r: (r.guest_port, r.protocol))
        rows += sorted(st.refused.values(), key=lambda r: (r.guest_port, r.protocol))
        return rows
