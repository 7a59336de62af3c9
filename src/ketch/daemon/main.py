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
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ketch.layout import DIR_MODE, UMASK, Root, storage_root
from ketch.model import OperationKind

if TYPE_CHECKING:
    from ketch.daemon.ops import Operations, QueueReporter

log = logging.getLogger("ketchd")

SCHEDULER_PERIOD = 1.0


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
        now = time.time()
        for record in ops.ctx.store.all():
            due = record.shutdown_at
            if due is None or due > now or record.deleted:
                continue
            name = record.spec.name
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


async def serve(root: Root) -> None:
    from aiohttp import web

    from ketch.daemon.api import Api
    from ketch.daemon.guard import Guard, GuardedUnixSite, Limits, accept_errors
    from ketch.daemon.ops import Operations
    from ketch.runtime.qemu_driver import QemuDriver
    from ketch.service.context import Context
    from ketch.service.images import Images
    from ketch.store.db import Store

    store = Store(root.database)
    images = Images(root, store)
    ctx = Context(root=root, store=store, driver=QemuDriver(), images=images)
    boot_timeout = os.environ.get("KETCH_BOOT_TIMEOUT")
    if boot_timeout:
        ctx.boot_timeout = float(boot_timeout)
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
    app = Api(ops, images).app()
    app.middlewares.insert(0, guard.middleware)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
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
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    scheduler = asyncio.create_task(_scheduler(ops))
    adopting = asyncio.create_task(_adopt_mounts(ops))
    try:
        await stop.wait()
    finally:
        scheduler.cancel()
        adopting.cancel()
        if recovering is not None and not recovering.done():
            await asyncio.wait([recovering], timeout=30)
        log.info("ketchd stopping; running instances keep running")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ops.drain(), 30)
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            root.socket.unlink()
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ketchd", description="the ketch daemon")
    parser.add_argument("--storage", help="storage root (default: $KETCH_STORAGE or XDG data dir)")
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
        asyncio.run(serve(root))
    finally:
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
