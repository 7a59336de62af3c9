"""ketchd's entry point: one daemon per storage root, serving on a Unix socket.

Start-up never touches running VMs: QEMU processes are detached and found
again through their instance directories.  Operations the journal shows
unfinished are finished or rolled back (``service/recovery.py``) before the
affected instances accept new operations.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ketch.errors import KetchError
from ketch.layout import DIR_MODE, UMASK, Root, storage_root
from ketch.model import OperationKind

if TYPE_CHECKING:
    from aiohttp import web

    from ketch.daemon.ops import Operations, QueueReporter

log = logging.getLogger("ketchd")

SCHEDULER_PERIOD = 1.0
WARNING_HEADER = "Ketch-Warning"  # what the first client is told (JSON list of lines)


class AlreadyRunning(Exception):
    pass


def _lock_pidfile(path: Path) -> IO[str]:
    """Hold an exclusive lock on the pid file for the daemon's life."""
    f = path.open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        f.close()
        raise AlreadyRunning(str(path)) from exc
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


async def _scheduler(ops: Operations) -> None:
    """Carry out delayed shutdowns when they fall due."""
    import msgspec

    from ketch.progress import NULL
    from ketch.service import lifecycle

    while True:
        await asyncio.sleep(SCHEDULER_PERIOD)
        for name in lifecycle.due_shutdowns(ops.ctx):
            if ops.lock(name).locked():
                continue
            log.info("delayed shutdown of %s is due", name)

            async def stop(rep: QueueReporter, name: str = name) -> dict[str, Any]:
                result: dict[str, Any] = msgspec.to_builtins(
                    await lifecycle.stop(ops.ctx, name, NULL)
                )
                return result

            event = await ops.run([name], OperationKind.STOP, stop)
            if event.get("type") == "error":
                log.warning("delayed shutdown of %s failed: %s", name, event.get("error"))
                ops.ctx.store.set_shutdown_at(name, None)


async def _queued(ops: Operations) -> None:
    """Run the stop --force and purges queued for hosts that did not answer, once they do."""
    import msgspec

    from ketch.progress import NULL
    from ketch.service import delete, lifecycle, queued

    await ops.recovered.wait()
    while True:
        await asyncio.sleep(queued.QUEUE_PERIOD)
        names = {q.instance for q in ops.ctx.store.queued_ops()}
        if not names:
            continue
        busy = {n for n in names if ops.lock(n).locked()}
        try:
            ready = await queued.due(ops.ctx, busy)
        except Exception:  # the next round tries again; this task must not end
            log.exception("looking at the queued operations' hosts failed")
            continue
        for q in ready:
            log.info("the host of %s answers: its queued %s runs", q.instance, q.op)

            async def work(rep: QueueReporter, q: queued.QueuedOp = q) -> dict[str, Any]:
                if q.op is OperationKind.PURGE:
                    done: Any = await delete.delete(ops.ctx, q.instance, NULL, purge=True)
                else:
                    done = await lifecycle.force_stop(ops.ctx, q.instance, NULL)
                result: dict[str, Any] = msgspec.to_builtins(done)
                return result

            event = await ops.run([q.instance], q.op, work)
            if event.get("type") == "error":
                log.warning("queued %s of %s: %s", q.op, q.instance, event.get("error"))


async def _autostart(ops: Operations, rebooted: bool) -> None:
    """After a host reboot: start again what was running (``service/autostart.py``)."""
    import msgspec

    from ketch.progress import NULL
    from ketch.service import autostart, lifecycle

    await ops.recovered.wait()
    if not rebooted:
        return
    wanted = await autostart.candidates(ops.ctx)
    log.info("the host rebooted since ketchd last ran: %d instance(s) to start again", len(wanted))
    for batch in autostart.batches(wanted, autostart.available_memory()):

        async def one(name: str) -> None:
            async def start(rep: QueueReporter) -> dict[str, Any]:
                result: dict[str, Any] = msgspec.to_builtins(
                    await lifecycle.start(ops.ctx, name, NULL)
                )
                return result

            log.info("host rebooted: starting %s again (its intent is running)", name)
            event = await ops.run([name], OperationKind.START, start)
            if event.get("type") == "error":
                log.warning("autostart of %s failed: %s", name, event.get("error"))
            else:
                log.info("autostart of %s: started", name)

        await asyncio.gather(*(one(n) for n in batch))


async def _adopt_mounts(ops: Operations) -> None:
    """Once recovery is done: find every mount's host side again, restart the dead ones."""
    from ketch.progress import NULL
    from ketch.service import mounts

    await ops.recovered.wait()
    for record in ops.ctx.store.all():
        name = record.spec.name
        if record.deleted or not (
            record.spec.mounts or ops.ctx.root.instance(name).mounts.exists()
        ):
            continue

        async def adopt(rep: QueueReporter, name: str = name) -> dict[str, Any]:
            await mounts.adopt(ops.ctx, name, NULL)
            return {"name": name}

        event = await ops.run([name], OperationKind.MOUNT, adopt)
        if event.get("type") == "error":
            log.warning("the mounts of %s were not re-established: %s", name, event.get("error"))


async def _recover(ops: Operations, held: list[str]) -> None:
    """Finish or roll back what a previous daemon left half-done, then free the locks."""
    from ketch.progress import NULL
    from ketch.service import recovery

    try:
        for line in await recovery.recover_all(ops.ctx, NULL, ignore_active=held):
            log.info("recovered: %s", line)
    except Exception:
        log.exception("recovery of interrupted operations failed")
    finally:
        ops.release(held)
        ops.recovered.set()


def tell_first_client(app: web.Application, lines: list[str]) -> None:
    """The first reply (but a ping's) carries ``lines`` in a ``Ketch-Warning`` header (JSON)."""
    import json

    pending = [json.dumps(lines)]

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        if pending and request.path != "/v1/version":
            response.headers[WARNING_HEADER] = pending.pop()

    app.on_response_prepare.append(on_prepare)


async def serve(root: Root, address: str | None = None) -> None:
    from aiohttp import web

    from ketch.daemon.api import Api
    from ketch.daemon.guard import Guard, GuardedUnixSite, Limits, accept_errors
    from ketch.daemon.ops import Operations
    from ketch.runtime.network import ManagedNetwork
    from ketch.runtime.qemu_driver import QemuDriver
    from ketch.service.context import Context
    from ketch.service.images import Images
    from ketch.store.repair import open_store

    store, repaired = open_store(root)
    for line in repaired.lines():
        log.warning("database: %s", line)
    images = Images(root, store)
    network = ManagedNetwork(root, store.get_setting)
    from ketch.service.drivers import Drivers

    local = QemuDriver(network)
    ctx = Context(root=root, store=store, driver=local, images=images, network=network)
    ctx.drivers = Drivers(root, store, local)  # a libvirt host's: made at its first use
    boot_timeout = os.environ.get("KETCH_BOOT_TIMEOUT")
    if boot_timeout:
        ctx.boot_timeout = float(boot_timeout)
    from ketch.service.forward_watch import Forwarder

    ctx.forwarder = Forwarder(ctx)
    ops = Operations(ctx)
    interrupted = store.unfinished()
    for entry in interrupted:
        log.warning(
            "operation %s on %s was interrupted (step %r)", entry.op, entry.instance, entry.step
        )
    # The locks are taken before the socket opens: requests on these instances
    # wait until recovery is done.
    held = await ops.acquire({e.instance for e in interrupted}, OperationKind.RECOVER)
    if held:
        ops.recovered.clear()
    recovering = asyncio.create_task(_recover(ops, held)) if held else None
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(accept_errors)
    limits = Limits.from_env()
    guard = Guard(limits, loop)
    api = Api(ops, images)
    app = api.app()
    if repaired:
        tell_first_client(app, repaired.lines())
    app.middlewares.insert(0, guard.middleware)
    from ketch.daemon import auth

    # Remote access (daemon/tls.py): ketchd --address, else local.address; the gate stands in
    # front of every request, the Unix socket's pass.
    address = address or store.get_setting("local.address") or None
    api.trust, api.attempts = auth.Trust(root), auth.attempts_from_env()
    app.middlewares.insert(1, auth.middleware(api.trust))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    from ketch.daemon.web.remote import open_remote

    # The TLS listener's own application: the same API and the dashboard's page beside it,
    # behind the remote policy (certificates as the gate's, or a passphrase login).
    listener, tls_runner, _ = await open_remote(api, root, limits, ctx.clock)
    await listener.move(address)  # first: an address it cannot take is a refusal to start
    api.setting_hooks["local.address"] = listener.move  # 'ketch set local.address': at once
    with contextlib.suppress(FileNotFoundError):
        root.socket.unlink()
    old = os.umask(0o177)
    try:
        site = GuardedUnixSite(
            runner,
            str(root.socket),
            guard,
            access_log=None,
            keepalive_timeout=limits.idle_timeout,
        )
        await site.start()
    finally:
        os.umask(old)
    os.chmod(root.socket, 0o600)
    from ketch.daemon import rootwatch

    watched = {p: rootwatch.identity(p) for p in (root.path, root.socket)}
    mine = watched[root.socket]
    log.info(
        "ketchd listening on %s (at most %d connections; timeouts: head %g s, idle %g s, "
        "body %g s)",
        root.socket,
        limits.max_connections,
        limits.head_timeout,
        limits.idle_timeout,
        limits.body_timeout,
    )

    stop = asyncio.Event()
    orphaned: list[str] = []

    def root_gone(reason: str) -> None:
        log.warning("%s: ketchd stops (it can never be reached again)", reason)
        orphaned.append(reason)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    scheduler = asyncio.create_task(_scheduler(ops))
    forwarding = asyncio.create_task(ctx.forwarder.run())  # QEMU keeps the forwards it has
    from ketch.service import autostart

    before = autostart.record_boot_id(root.boot_id, boot := autostart.current_boot_id())
    restarting = asyncio.create_task(_autostart(ops, autostart.rebooted(before, boot)))
    watcher = asyncio.create_task(
        rootwatch.watch({p: i for p, i in watched.items() if i is not None}, root_gone)
    )
    adopting = asyncio.create_task(_adopt_mounts(ops))
    retrying = asyncio.create_task(_queued(ops))
    try:
        await stop.wait()
    finally:
        retrying.cancel()
        scheduler.cancel()
        adopting.cancel()
        forwarding.cancel()
        watcher.cancel()
        restarting.cancel()
        # A root that is gone cannot be waited on: what runs there fails anyway.
        grace = 2.0 if orphaned else 30.0
        if recovering is not None and not recovering.done():
            await asyncio.wait([recovering], timeout=grace)
        log.info("ketchd stopping; running instances keep running")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ops.drain(), grace)
        await listener.move(None)
        await tls_runner.cleanup()
        await runner.cleanup()
        with contextlib.suppress(Exception):  # libvirt connections: nothing is left to do
            await ctx.drivers.close()
        if rootwatch.identity(root.socket) == mine:  # never another daemon's socket
            with contextlib.suppress(FileNotFoundError):
                root.socket.unlink()
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ketchd", description="the ketch daemon")
    parser.add_argument("--storage", help="storage root (default: $KETCH_STORAGE or XDG data dir)")
    parser.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="also listen on TCP, TLS 1.3 with client certificates (default: local.address)",
    )
    args = parser.parse_args(argv)
    if args.storage:
        os.environ["KETCH_STORAGE"] = args.storage
    os.umask(UMASK)  # before anything is created: files 0600, directories 0700
    root = Root(storage_root())
    root.path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from ketch.daemon.guard import RateLimit
    from ketch.daemon.trust import UntrustedRoot, check_root

    for handler in logging.getLogger().handlers:
        handler.addFilter(RateLimit())  # a flood of one message cannot fill the disk

    try:
        for path in check_root(root):
            log.info("tightened %s to owner-only", path)
    except UntrustedRoot as exc:
        print(f"ketchd: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"ketchd: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    try:
        lock = _lock_pidfile(root.daemon_pid)
    except AlreadyRunning:
        print(f"ketchd: another ketchd already serves {root.path}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(root, args.address))
    except KetchError as exc:  # could not start: said as a refusal (exit 2), which the client shows
        log.error("ketchd cannot start: %s", exc.message)
        print(f"ketchd: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"ketchd: {exc.hint}", file=sys.stderr)
        return 2
    except Exception as exc:  # exit 1 means "another daemon won": this is not that
        log.exception("ketchd failed")
        print(f"ketchd: internal error: {exc}", file=sys.stderr)
        return 4
    finally:
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
