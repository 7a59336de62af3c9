"""libvirt, thinly: open a connection, ask what a host has, close it; each call bounded in time.

The binding (``libvirt-python``, the ``libvirt`` extra) is imported here only, and only in
the worker thread of a call: ``ketch list``, ``info`` and ``exec`` never load it, nor does
ketchd until a libvirt host is probed.  Its errors (``libvirt.libvirtError``) become
:class:`~ketch.errors.HostUnreachable` here, once, with the reason made short
(:func:`reason`).

libvirt's calls block, and one to a host that does not answer can block for as long as
ssh or TCP lets it.  So :class:`Prober` runs each probe (open, ``virNodeGetInfo``,
``virNodeGetFreeMemory``, the active storage pools' ``virStoragePoolGetInfo``, close) in a
daemon thread of its own and waits for it at most ``timeout`` seconds: past that the
host is unreachable ("did not answer within N s") and the caller goes on.  The thread is
left to finish (ssh's own ``ConnectTimeout`` and keepalives end it; see
:mod:`~ketch.host.libvirt_ssh`); while it runs, a new probe of the same URI waits on it
rather than starting another, so a dead host costs one thread, not one per ``host list``.

The libvirt driver's calls (:mod:`~ketch.runtime.libvirt_driver`) go through
:func:`bounded` the same way: one daemon thread per call, waited for at most its
deadline (:class:`~ketch.errors.Timeout` past it), its ``libvirtError`` translated once
(:func:`translate`): a connection that fails is :class:`~ketch.errors.HostUnreachable`, a
domain, pool or volume that is not there :class:`~ketch.errors.NotFound`, anything else
:class:`~ketch.errors.LibvirtFailed` naming the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ketch.errors import HostUnreachable, KetchError, LibvirtFailed, NotFound, Timeout

T = TypeVar("T")

VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE = 2  # libvirt's enum value (no import needed for it)
KEEPALIVE_INTERVAL = 5  # seconds; libvirt's keepalive, for the calls after the open
KEEPALIVE_COUNT = 3
MAX_REASON = 240


@dataclass(frozen=True)
class NodeFacts:
    """What a host has, as libvirt (or, for ``local``, the kernel) reports it."""

    cpus: int
    memory_total: int  # bytes (virNodeGetInfo's memory: the binding gives MiB, rounded down)
    memory_free: int  # bytes (virNodeGetFreeMemory)
    disk_free: int | None  # bytes available in the roomiest active storage pool (None: none)
    disk_pool: str | None  # that pool's name
    libvirt_version: str | None = None  # the libvirtd's, "9.0.0" (None: local)
    hostname: str | None = None
    arch: str | None = None  # the machine's architecture: "x86_64" (virNodeGetInfo's model)


def _version(n: int) -> str:
    return f"{n // 1_000_000}.{n // 1000 % 1000}.{n % 1000}"


# What libvirt and ssh say, and what ketch says for it: the first pattern found wins.
_KNOWN = (
    ("REMOTE HOST IDENTIFICATION HAS CHANGED", "the host's SSH key is not the one trusted"),
    ("Host key verification failed", "the host's SSH key is not trusted (give --known-hosts)"),
    ("No ED25519 host key is known", "the host's SSH key is not trusted (give --known-hosts)"),
    ("Permission denied (publickey", "ssh: the key was refused (permission denied)"),
)


def reason(text: str) -> str:
    """libvirt's (or ssh's) error message, made one short line (pure)."""
    for needle, said in _KNOWN:
        if needle in text:
            return said
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("@")]
    one = re.sub(r"\s+", " ", " ".join(lines)).strip()
    for prefix in ("Cannot recv data: ", "End of file while reading data: "):
        one = one.removeprefix(prefix)
    one = one.removesuffix(": Input/output error")
    if len(one) > MAX_REASON:
        one = one[: MAX_REASON - 1] + "…"
    return one or "libvirt gave no reason"


def _binding() -> Any:
    try:
        import libvirt
    except ImportError as exc:
        raise HostUnreachable(
            "libvirt's Python binding is not installed",
            hint="run scripts/install, or pip install 'ketch[libvirt]' (it builds against "
            "libvirt-dev)",
        ) from exc
    if not getattr(_binding, "quiet", False):
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # not on stderr
        _binding.quiet = True  # type: ignore[attr-defined]
    return libvirt


# libvirt's virErrorNumber values (no import needed for them)
VIR_ERR_NO_CONNECT = 5
VIR_ERR_NO_DOMAIN = 42
VIR_ERR_NO_STORAGE_POOL = 49
VIR_ERR_NO_STORAGE_VOL = 50
VIR_ERR_SYSTEM_ERROR = 38
VIR_ERR_RPC = 39
VIR_ERR_AUTH_FAILED = 45
VIR_ERR_NO_DOMAIN_SNAPSHOT = 72
_MISSING = {
    VIR_ERR_NO_DOMAIN, VIR_ERR_NO_STORAGE_POOL, VIR_ERR_NO_STORAGE_VOL, VIR_ERR_NO_DOMAIN_SNAPSHOT
}  # fmt: skip
_UNREACHABLE = {VIR_ERR_NO_CONNECT, VIR_ERR_RPC, VIR_ERR_AUTH_FAILED}


def translate(code: int | None, message: str, call: str) -> KetchError:
    """The ketch error for libvirt's error ``code`` and ``message`` in ``call`` (pure)."""
    said = reason(message)
    if code in _MISSING:
        return NotFound(f"libvirt: {said}")
    if code in _UNREACHABLE or call == "open":
        return HostUnreachable(said)
    return LibvirtFailed(call, said)


def binding() -> Any:
    """The ``libvirt`` module (imported on first use; HostUnreachable when not installed)."""
    return _binding()


def _set(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


async def bounded(call: Callable[[], T], *, timeout: float, what: str) -> T:
    """Run the blocking ``call`` in a daemon thread of its own, waiting at most ``timeout``.

    A ``libvirtError`` it raises is translated (:func:`translate`, ``what`` naming the
    call); past the deadline :class:`~ketch.errors.Timeout`, and the thread is left to end
    by itself (libvirt's keepalive, or the call's own end).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = call()
        except KetchError as exc:
            error = exc
        except Exception as exc:
            error = exc
            with contextlib.suppress(KetchError):  # no binding: the error stays as raised
                if isinstance(exc, _binding().libvirtError):
                    error = translate(exc.get_error_code(), str(exc), what)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(_set, future, value, error)

    threading.Thread(target=run, name=f"libvirt-{what}", daemon=True).start()
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout)
    except TimeoutError:
        raise Timeout(f"libvirt: {what} did not answer within {timeout:.0f} s") from None


def probe(uri: str) -> NodeFacts:
    """Open ``uri``, read the node's facts, close (blocks: run it with :class:`Prober`)."""
    libvirt = _binding()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise HostUnreachable(reason(str(exc))) from exc
    try:
        info = conn.getInfo()  # [model, memory MiB, cpus, mhz, nodes, sockets, cores, threads]
        free = int(conn.getFreeMemory())
        best: tuple[int, str] | None = None
        for pool in conn.listAllStoragePools(VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
            available = int(pool.info()[3])  # [state, capacity, allocation, available]
            if best is None or available > best[0]:
                best = (available, pool.name())
        return NodeFacts(
            cpus=int(info[2]),
            memory_total=int(info[1]) * 1024 * 1024,
            memory_free=free,
            disk_free=None if best is None else best[0],
            disk_pool=None if best is None else best[1],
            libvirt_version=_version(int(conn.getLibVersion())),
            hostname=str(conn.getHostname()),
            arch=str(info[0]),
        )
    except libvirt.libvirtError as exc:
        raise HostUnreachable(reason(str(exc))) from exc
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


@dataclass
class _Flight:
    """One probe's thread, still running or done; the event loops' futures waiting on it."""

    started: float
    done: bool = False
    facts: NodeFacts | None = None
    error: KetchError | None = None
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = field(
        default_factory=list
    )


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Prober:
    """Runs blocking probes in threads, each waited for at most its deadline."""

    def __init__(self, call: Callable[[str], NodeFacts] = probe) -> None:
        self._call = call
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()

    def _run(self, uri: str, flight: _Flight) -> None:
        facts: NodeFacts | None = None
        error: KetchError | None = None
        try:
            facts = self._call(uri)
        except KetchError as exc:
            error = exc
        except Exception as exc:  # a bug or a foreign error: reported, never lost in a thread
            error = HostUnreachable(reason(f"{type(exc).__name__}: {exc}"))
        with self._lock:
            flight.facts, flight.error, flight.done = facts, error, True
            if self._flights.get(uri) is flight:
                del self._flights[uri]
            waiters, flight.waiters = flight.waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_wake, future)

    def in_flight(self) -> int:
        """How many probes' threads still run (a dead host's, past their deadline)."""
        with self._lock:
            return len(self._flights)

    async def probe(self, uri: str, timeout: float) -> NodeFacts:
        """The host's facts, or HostUnreachable (its reason, or the deadline passed)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            flight = self._flights.get(uri)
            joined = flight is not None
            if flight is None:
                flight = _Flight(started=time.monotonic())
                self._flights[uri] = flight
                threading.Thread(
                    target=self._run, args=(uri, flight), name="libvirt-probe", daemon=True
                ).start()
            if flight.done:
                future.set_result(None)
            else:
                flight.waiters.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            waited = time.monotonic() - flight.started
            again = " (an earlier probe still waits for it)" if joined else ""
            raise HostUnreachable(f"did not answer within {waited:.0f} s{again}") from None
        if flight.error is not None:
            raise flight.error
        assert flight.facts is not None
        return flight.facts
