"""Downloading one file into the vault: hashed on the way, bounded, with progress.

:class:`Sink` is a temporary file that hashes what is written to it;
:func:`http_get` and :func:`copy_file` fill one from a URL or a local file.
A download with a known ``size`` (the catalogue's) is refused when the
server announces another length and stops as soon as it passes the size
(issue 12 item 7), with the numbers; a download from an https URL is never
redirected to anything but https.  The vault (:mod:`ketch.images.vault`)
decides what to fetch and where the result goes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from ketch import space
from ketch.errors import ImageError
from ketch.progress import Reporter

CHUNK = 1 << 20
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=20, sock_read=60)


def client_session(*, decompress: bool = True) -> aiohttp.ClientSession:
    """An HTTP session with bounded connect/read timeouts, honouring proxy variables."""
    return aiohttp.ClientSession(timeout=TIMEOUT, trust_env=True, auto_decompress=decompress)


class Sink:
    """A temporary file that hashes what is written to it (blocking I/O, small writes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("wb")
        self.hash = hashlib.sha256()
        self.done = 0
        self.validators: tuple[str | None, str | None] | None = None  # ETag, Last-Modified

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.hash.update(chunk)
        self.done += len(chunk)

    def finish(self, target: Path) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.chmod(self.path, 0o444)
        os.replace(self.path, target)

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


async def http_get(
    url: str,
    *,
    headers: dict[str, str],
    sink: Sink,
    size: int | None,
    reporter: Reporter,
    what: str,
    conditional: bool = False,
) -> bool:
    """GET ``url`` into ``sink``; True when a ``conditional`` request got 304 (nothing written).

    On success ``sink.validators`` holds the response's ETag and Last-Modified.
    """
    expected: int | None = None
    try:
        async with (
            client_session(decompress=False) as session,
            session.get(url, headers=headers) as resp,
        ):
            if _scheme(url) == "https" and resp.url.scheme != "https":
                raise ImageError(
                    f"download of {url} refused: it was redirected to {resp.url}, "
                    "which is not https; nothing was kept"
                )
            if resp.status == 304 and conditional:
                return True
            if resp.status != 200:
                raise ImageError(
                    f"cannot download {url}: HTTP {resp.status} {resp.reason or ''}".rstrip()
                )
            expected = resp.content_length
            if size is not None and expected is not None and expected != size:
                raise ImageError(
                    f"download of {url} refused: the server announces {expected} bytes, "
                    f"the catalogue {size}; nothing was kept"
                )
            space.require("download", sink.path.parent, size=size or expected or 0)
            progress = Progress(reporter, what, size or expected)
            async for chunk in resp.content.iter_chunked(CHUNK):
                if size is not None and sink.done + len(chunk) > size:
                    raise _oversize(url, size, sink.done + len(chunk))
                sink.write(chunk)
                progress(sink.done)
            validators = (resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        of = "" if expected is None else f" of {expected}"
        raise ImageError(
            f"download of {url} failed after receiving {sink.done}{of} bytes: "
            f"{describe(exc)}; nothing was kept",
            hint="check the network connection and try again",
        ) from exc
    expected = size if size is not None else expected
    if expected is not None and sink.done != expected:
        raise ImageError(
            f"download of {url} ended early: received {sink.done} of {expected} bytes; "
            "nothing was kept"
        )
    sink.validators = validators
    return False


async def copy_file(
    path: Path, url: str, sink: Sink, size: int | None, reporter: Reporter, what: str
) -> None:
    """Copy the local file ``path`` (named by ``url``) into ``sink``, bounded by ``size``."""
    try:
        src = await asyncio.to_thread(path.open, "rb")
    except OSError as exc:
        raise ImageError(f"cannot read {url}: {exc.strerror or exc}") from exc
    with src:
        total = size or os.fstat(src.fileno()).st_size
        space.require("download", sink.path.parent, size=total)
        progress = Progress(reporter, what, total)
        while chunk := await asyncio.to_thread(src.read, CHUNK):
            if size is not None and sink.done + len(chunk) > size:
                raise _oversize(url, size, sink.done + len(chunk))
            sink.write(chunk)
            progress(sink.done)


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.lower()


def _oversize(url: str, size: int, received: int) -> ImageError:
    return ImageError(
        f"download of {url} stopped at {received} bytes: more than the {size} bytes "
        "the catalogue announces; nothing was kept",
        hint="the remote's catalogue or the file it names is wrong",
    )


class Progress:
    """Calls ``reporter.progress`` about every 1 % (at least every MiB), and at the end."""

    def __init__(self, reporter: Reporter, label: str, total: int | None) -> None:
        self.reporter, self.label, self.total = reporter, label, total
        self.every = max((total or 0) // 100, CHUNK)
        self.next = 0
        reporter.progress(label, 0, total)

    def __call__(self, done: int) -> None:
        if done >= self.next or done == self.total:
            self.reporter.progress(self.label, done, self.total)
            self.next = done + self.every


def describe(exc: BaseException) -> str:
    """A short reason for a network failure, without aiohttp's internals."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the server closed the connection before the end"
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error
        why = err.strerror or (os.strerror(err.errno) if err.errno else str(err))
        return f"cannot connect to {exc.host}:{exc.port}: {why}"
    return str(exc) or type(exc).__name__
