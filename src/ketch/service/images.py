"""Use cases on images: resolve for launch, find, list and prune the cache, build.

The built-in ``tiny`` and ``debian-12`` images are built into the storage
root's vault (instance disks are overlays backed by them, so they must live as
long as those do).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path

import msgspec

from ketch.api import models as m
from ketch.clock import SYSTEM, Clock
from ketch.errors import InvalidArgument
from ketch.images import catalog
from ketch.images import resolve as resolver
from ketch.images.buildproc import build_in_child
from ketch.images.vault import Vault, VaultEntry
from ketch.layout import Root
from ketch.model import ImageInfo
from ketch.progress import NULL, Reporter
from ketch.store.db import Store

REMOTE_PREFIX = "local.remote."


class Images:
    """The daemon's image provider (implements service.context.ImageProvider)."""

    def __init__(self, root: Root, store: Store, clock: Clock = SYSTEM) -> None:
        self.root = root
        self.store = store
        self.clock = clock
        self.vault = Vault(root.vault)

    @property
    def built_dir(self) -> Path:
        return self.root.vault / "built"

    def remotes(self) -> dict[str, str]:
        """Default remotes, overridden or extended by ``local.remote.NAME`` settings."""
        found = dict(catalog.DEFAULT_REMOTES)
        for key, value in self.store.settings(REMOTE_PREFIX):
            found[key[len(REMOTE_PREFIX) :]] = value
        return found

    async def build_tiny(self, reporter: Reporter, *, force: bool = False) -> ImageInfo:
        if not force:  # a build that cannot be stale: found here, read only (no child)
            from ketch.images import tiny

            found = await asyncio.to_thread(tiny.fresh_build, self.built_dir)
            if found is not None:
                return found
        # In a child process with the build's own umask, never ketchd's 077 (see buildproc).
        return await build_in_child("tiny", self.built_dir, reporter, force=force)

    async def build_debian(self, reporter: Reporter, *, force: bool = False) -> ImageInfo:
        return await build_in_child("debian-12", self.built_dir, reporter, force=force)

    async def resolve(self, ref: str, reporter: Reporter) -> ImageInfo:
        return await resolver.resolve(
            ref,
            remotes=self.remotes(),
            vault=self.vault,
            build_tiny=self.build_tiny,
            reporter=reporter,
            build_debian=self.build_debian,
        )

    def tiny_info(self) -> ImageInfo | None:
        """The newest built tiny image, if one is on disk (no build)."""
        from ketch.images import tiny

        return tiny.newest_built(self.built_dir)

    def probe_kernel(self) -> Path | None:
        info = self.tiny_info()
        return Path(info.boot.kernel) if info and info.boot.kernel else None

    async def find(
        self, query: str | None, *, show_unsupported: bool = False, force_update: bool = False
    ) -> list[m.FindRow]:
        rows = await catalog.find(
            query,
            remotes=self.remotes(),
            vault=self.vault,
            tiny_info=self.tiny_info(),
            show_unsupported=show_unsupported,
            force_update=force_update,
        )
        return [msgspec.convert(asdict(r), m.FindRow) for r in rows]

    def list_cached(self) -> list[m.CachedImage]:
        """Downloaded blobs, then built images (with the instances each one backs)."""
        rows = [_cached(e) for e in self.vault.list()]
        records = self.store.all()
        for manifest in sorted(self.built_dir.glob("*/*/manifest.json")):
            d = manifest.parent
            stat = manifest.stat()
            rows.append(
                m.CachedImage(
                    digest=f"{d.parent.name}@{d.name}",
                    path=str(d),
                    size=sum(f.stat().st_size for f in d.iterdir() if f.is_file()),
                    source="built",
                    added=stat.st_mtime,
                    last_used=stat.st_mtime,
                    owners=[r.spec.name for r in records if Path(r.spec.base_disk).parent == d],
                )
            )
        return rows

    def prune(self, days: float, in_use: set[str]) -> list[m.CachedImage]:
        """Remove downloads and built images unused for ``days``.

        A built image is kept while any instance's disk is backed by it, and
        the newest build of each name is always kept.
        """
        import shutil

        now = self.clock.time()
        removed = [_cached(e) for e in self.vault.prune(days, in_use, now=now)]
        cutoff = now - days * 86400
        built = [r for r in self.list_cached() if r.source == "built"]
        newest: dict[str, float] = {}
        for row in built:
            kind = row.digest.split("@", 1)[0]
            newest[kind] = max(newest.get(kind, 0.0), row.added)
        for row in built:
            kind = row.digest.split("@", 1)[0]
            if row.owners or row.added >= newest[kind] or row.added > cutoff:
                continue
            if any(str(p).startswith(row.path + "/") for p in in_use):
                continue
            shutil.rmtree(row.path, ignore_errors=True)
            removed.append(row)
        return removed


def prune(images: Images, store: Store, days: float) -> list[m.CachedImage]:
    """Remove cached images unused for ``days``, keeping every one an instance is made from."""
    records = store.all()
    in_use = {r.spec.image_id for r in records} | {r.spec.base_disk for r in records}
    return images.prune(days, in_use)


def _cached(entry: VaultEntry) -> m.CachedImage:
    """A downloaded blob as the wire's cached-image row."""
    return m.CachedImage(
        digest=entry.digest,
        path=str(entry.path),
        size=entry.size,
        source=entry.source,
        added=entry.added,
        last_used=entry.last_used,
        owners=list(entry.owners),
    )


BUILDABLE = ("tiny", "debian-12")


async def build(
    images: Images, reporter: Reporter = NULL, *, force: bool = False, name: str = "tiny"
) -> ImageInfo:
    if name == "debian-12":
        return await images.build_debian(reporter, force=force)
    if name != "tiny":
        raise InvalidArgument(
            f"unknown image '{name}'", hint="ketch can build: " + ", ".join(BUILDABLE)
        )
    return await images.build_tiny(reporter, force=force)
