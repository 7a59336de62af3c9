"""The vault: a content-addressed cache of verified image files.

Layout under the vault root (``<storage>/vault``)::

    sha256/<hex>           verified blobs, named by their sha256, read-only
    tmp/<key>.<pid>.<rand>.part
                           downloads in progress; never trusted, swept when
                           their process is gone
    locks/<key>.lock       flock(2) files serialising downloads of one digest
                           (or one URL when no digest is known) across processes
    catalogs/<hash>.json   last copy of each remote's products file (verified
                           when the remote's catalogue is signed)
    keyrings/<remote>.gpg  put there by the user: the OpenPGP keyring that
                           verifies that remote's signed catalogue
    index.json             metadata, rewritten atomically (see below)
    index.lock             flock(2) file guarding index.json updates

``index.json`` holds ``blobs`` {hex: {size, source, added, last_used,
owners}}, ``urls`` {url: {sha256, etag, last_modified}} for downloads
without a published digest, ``catalogs`` {url: {file, etag, last_modified}}
and ``resolutions`` {"remote:alias": {version: record}}: what each catalogue
alias resolved to, so a later resolution can fall back to it when the remote
is unreachable.

A download (:mod:`ketch.images.download`) streams into ``tmp/``, is hashed
on the way, bounded by the catalogue's size, and is renamed into
``sha256/`` only when complete and matching; anything else deletes it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ketch.errors import DigestMismatch, ImageError, InvalidArgument
from ketch.host import procs
from ketch.images.download import Sink, copy_file, http_get
from ketch.progress import Reporter

BLOBS = "sha256"
TMP = "tmp"
LOCKS = "locks"
CATALOGS = "catalogs"
KEYRINGS = "keyrings"
INDEX = "index.json"
INDEX_LOCK = "index.lock"

_HEX = re.compile(r"^[0-9a-f]{64}$")
_LOCKS: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}


@dataclass(frozen=True)
class VaultEntry:
    """One cached blob and what is known about it."""

    digest: str
    path: Path
    size: int
    source: str  # URL it was fetched from ("" when unknown)
    added: float
    last_used: float
    owners: tuple[str, ...]  # image ids that use it


class Vault:
    """The image cache under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / BLOBS
        self.tmp = root / TMP
        self.locks = root / LOCKS
        self.catalogs = root / CATALOGS
        self.index = root / INDEX
        self._swept = False

    def keyring(self, remote: str) -> Path:
        """Where the user's keyring for ``remote`` lives (whether or not it is there)."""
        return self.root / KEYRINGS / f"{remote}.gpg"

    # -- blobs ------------------------------------------------------------

    def path_for(self, digest: str) -> Path:
        """Where the blob with this sha256 lives (whether or not it is there)."""
        return self.blobs / digest

    def has(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    async def fetch(
        self,
        url: str,
        *,
        sha256: str | None,
        size: int | None,
        reporter: Reporter,
        what: str,
        owner: str | None = None,
    ) -> Path:
        """The cached blob for ``url``, downloading and verifying it when needed.

        With ``sha256`` None nothing can be verified: the content's own digest
        names the blob, and the URL is re-checked with a conditional request.
        """
        if sha256 is not None:
            sha256 = sha256.lower()
            if not _HEX.match(sha256):
                raise ImageError(f"catalogue gives {what} an invalid sha256: {sha256!r}")
            if self.has(sha256):
                self.touch(sha256, owner)
                return self.path_for(sha256)
        key = sha256 or "url-" + hashlib.sha256(url.encode()).hexdigest()
        self._sweep_tmp()
        async with self._lock(key, reporter, what):
            if sha256 is not None and self.has(sha256):
                self.touch(sha256, owner)
                return self.path_for(sha256)
            digest = await self._download(url, sha256, size, reporter, what)
        self._record(digest, url, owner)
        return self.path_for(digest)

    @contextlib.asynccontextmanager
    async def _lock(self, key: str, reporter: Reporter, what: str) -> AsyncIterator[None]:
        slot = (str(self.root), key)
        lock, users = _LOCKS.get(slot, (asyncio.Lock(), 0))
        _LOCKS[slot] = (lock, users + 1)
        try:
            waiting = f"Waiting for another download of {what}"
            if lock.locked():
                reporter.step(waiting)
            async with lock:
                self.locks.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.locks / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    await _flock(fd, lambda: reporter.step(waiting))
                    yield
                finally:
                    os.close(fd)
        finally:
            lock, users = _LOCKS[slot]
            if users <= 1:
                del _LOCKS[slot]
            else:
                _LOCKS[slot] = (lock, users - 1)

    async def _download(
        self, url: str, sha256: str | None, size: int | None, reporter: Reporter, what: str
    ) -> str:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.blobs.mkdir(parents=True, exist_ok=True)
        name = f"{sha256 or 'url'}.{os.getpid()}.{secrets.token_hex(4)}.part"
        sink = Sink(self.tmp / name)
        try:
            parts = urlsplit(url)
            if parts.scheme == "file":
                await copy_file(Path(unquote(parts.path)), url, sink, size, reporter, what)
                cached = None
            elif parts.scheme in ("http", "https"):
                cached = await self._get(url, sha256, sink, size, reporter, what)
            else:
                raise InvalidArgument(f"cannot fetch {url}: unsupported URL scheme")
            if cached is not None:
                return cached
            actual = sink.hash.hexdigest()
            if sha256 is not None and actual != sha256:
                raise DigestMismatch(f"{what} ({url})", sha256, actual)
            sink.finish(self.path_for(actual))
            if sha256 is None and sink.validators is not None:
                etag, modified = sink.validators
                entry = {"sha256": actual, "etag": etag, "last_modified": modified}
                self._update(lambda m: m.setdefault("urls", {}).__setitem__(url, entry))
            return actual
        finally:
            sink.discard()

    async def _get(
        self,
        url: str,
        sha256: str | None,
        sink: Sink,
        size: int | None,
        reporter: Reporter,
        what: str,
    ) -> str | None:
        headers = {"Accept-Encoding": "identity"}
        known = self._meta().get("urls", {}).get(url, {}) if sha256 is None else {}
        if known and self.has(known.get("sha256", "")):
            if known.get("etag"):
                headers["If-None-Match"] = known["etag"]
            if known.get("last_modified"):
                headers["If-Modified-Since"] = known["last_modified"]
        else:
            known = {}
        unchanged = await http_get(
            url,
            headers=headers,
            sink=sink,
            size=size,
            reporter=reporter,
            what=what,
            conditional=bool(known),
        )
        return str(known["sha256"]) if unchanged else None

    # -- metadata ---------------------------------------------------------

    @contextlib.contextmanager
    def _locked_meta(self) -> Iterator[dict[str, Any]]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / INDEX_LOCK).open("a") as lockf:
            fcntl.flock(lockf, fcntl.LOCK_EX)
            meta = self._meta()
            yield meta
            tmp = self.index.with_name(f"{INDEX}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.index)

    def _meta(self) -> dict[str, Any]:
        try:
            meta = json.loads(self.index.read_text())
        except FileNotFoundError:
            return {"version": 1}
        except (OSError, ValueError) as exc:
            raise ImageError(f"the vault's {self.index} is unreadable: {exc}") from exc
        return meta if isinstance(meta, dict) else {"version": 1}

    def _update(self, change: Callable[[dict[str, Any]], object]) -> None:
        with self._locked_meta() as meta:
            change(meta)

    def _record(self, digest: str, source: str, owner: str | None) -> None:
        if not self.has(digest):
            return
        now = time.time()
        with self._locked_meta() as meta:
            blob = meta.setdefault("blobs", {}).setdefault(digest, {"added": now, "owners": []})
            blob.update(size=self.path_for(digest).stat().st_size, source=source, last_used=now)
            if owner and owner not in blob["owners"]:
                blob["owners"].append(owner)

    def touch(self, digest: str, owner: str | None = None) -> None:
        """Record that the blob was used now (and by ``owner``, an image id)."""
        self._record(digest, self._meta().get("blobs", {}).get(digest, {}).get("source", ""), owner)

    def remember(self, keys: Iterable[str], version: str, record: dict[str, Any]) -> None:
        """Record that each catalogue name in ``keys`` ("remote:alias") resolved to ``record``.

        ``record["digests"]`` lists the blobs it needs; pruning one forgets the record.
        """
        entry = {**record, "resolved_at": time.time()}
        with self._locked_meta() as meta:
            for key in keys:
                meta.setdefault("resolutions", {}).setdefault(key, {})[version] = entry

    def recall(self, key: str) -> list[dict[str, Any]]:
        """What ``key`` resolved to before, newest version first."""
        versions = self._meta().get("resolutions", {}).get(key, {})
        return [versions[v] for v in sorted(versions, reverse=True)]

    def cached_url(self, url: str) -> str | None:
        """The digest of the last download of ``url`` without a published digest."""
        digest = self._meta().get("urls", {}).get(url, {}).get("sha256")
        return digest if isinstance(digest, str) and self.has(digest) else None

    def load_catalog(
        self, url: str, *, limit: int = 64 << 20
    ) -> tuple[bytes, dict[str, str]] | None:
        """The saved copy of a catalogue file (at most ``limit`` bytes) and its validators."""
        entry = self._meta().get("catalogs", {}).get(url)
        if not entry or not isinstance(entry.get("file"), str):
            return None
        path = self.root / entry["file"]
        try:
            with path.open("rb") as f:
                data = f.read(limit + 1)
        except OSError:
            return None
        if len(data) > limit:
            return None  # not what store_catalog wrote: fetch it again
        return data, {k: entry[k] for k in ("etag", "last_modified") if entry.get(k)}

    def store_catalog(self, url: str, data: bytes, etag: str | None, modified: str | None) -> None:
        """Save a catalogue file with its validators, for conditional requests."""
        rel = f"{CATALOGS}/{hashlib.sha256(url.encode()).hexdigest()[:16]}.json"
        self.catalogs.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{rel}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.root / rel)
        entry = {"file": rel, "etag": etag, "last_modified": modified}
        self._update(lambda m: m.setdefault("catalogs", {}).__setitem__(url, entry))

    # -- listing and pruning ------------------------------------------------

    def list(self) -> list[VaultEntry]:
        """Every blob in the vault, with what the metadata knows about it."""
        blobs = self._meta().get("blobs", {})
        entries = []
        for path in sorted(self.blobs.glob("*")) if self.blobs.is_dir() else []:
            if not _HEX.match(path.name):
                continue
            info = blobs.get(path.name, {})
            st = path.stat()
            entries.append(
                VaultEntry(
                    digest=path.name,
                    path=path,
                    size=st.st_size,
                    source=str(info.get("source", "")),
                    added=float(info.get("added", st.st_mtime)),
                    last_used=float(info.get("last_used", st.st_mtime)),
                    owners=tuple(info.get("owners", ())),
                )
            )
        return entries

    def prune(
        self, older_than_days: float, in_use: set[str], *, now: float | None = None
    ) -> builtins.list[VaultEntry]:
        """Remove blobs unused for ``older_than_days`` and not in ``in_use``.

        ``in_use`` may hold digests, blob paths or image ids (owners).  Blobs
        being downloaded or verified right now are skipped.
        """
        cutoff = (time.time() if now is None else now) - older_than_days * 86400
        removed = []
        for entry in self.list():
            keys = {entry.digest, str(entry.path), *entry.owners}
            if keys & in_use or entry.last_used > cutoff:
                continue
            if self._remove(entry.digest):
                removed.append(entry)
        if removed:
            gone = {e.digest for e in removed}
            self._update(lambda m: _forget(m, gone))
        return removed

    def _remove(self, digest: str) -> bool:
        self.locks.mkdir(parents=True, exist_ok=True)
        with (self.locks / f"{digest}.lock").open("a") as lockf:
            try:
                fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self.path_for(digest).unlink(missing_ok=True)
            return True

    def _sweep_tmp(self) -> None:
        if self._swept or not self.tmp.is_dir():
            return
        self._swept = True
        for part in self.tmp.glob("*.part"):
            pid = part.name.split(".")[1] if part.name.count(".") >= 3 else ""
            if pid.isdigit() and not _alive(int(pid)):
                part.unlink(missing_ok=True)


def _forget(meta: dict[str, Any], gone: set[str]) -> None:
    for digest in gone:
        meta.get("blobs", {}).pop(digest, None)
    meta["urls"] = {u: v for u, v in meta.get("urls", {}).items() if v.get("sha256") not in gone}
    for key, versions in list(meta.get("resolutions", {}).items()):
        for version, record in list(versions.items()):
            if gone & set(record.get("digests", ())):
                del versions[version]
        if not versions:
            del meta["resolutions"][key]


async def _flock(fd: int, on_wait: Callable[[], None]) -> None:
    """Take an exclusive flock, polling so that cancellation stays possible."""
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not waited:
                on_wait()
                waited = True
            await asyncio.sleep(0.1)


def _alive(pid: int) -> bool:
    """A zombie counts as dead: a killed download's process may stay one a while
    (reaped late by its parent), and its ``.part`` is garbage all the same."""
    return procs.alive(pid)
