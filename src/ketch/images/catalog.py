"""Remotes: loading their simplestreams catalogues, and ``ketch find``.

A remote is a name bound to a simplestreams URL (:data:`DEFAULT_REMOTES`
are Ubuntu's).  ``ketch`` is the built-in remote: it offers only ``tiny``,
which is built locally rather than downloaded.  Products files are kept in
the vault and re-fetched with conditional requests (ETag / Last-Modified),
so an unchanged catalogue costs one small round trip.

What a remote is trusted with (issue 12): an index or products file is read
up to :data:`MAX_CATALOG` bytes, never more; the products file named by the
index and every redirect must stay on the remote's own scheme and host; the
server of the built-in Ubuntu remotes is read over https only.  Items are
checked by :mod:`ketch.images.simplestreams`.  When there is a keyring for
a remote (see :func:`keyring_for`) and ``gpgv`` is installed, the remote's
clearsigned ``.sjson`` files are read instead and must verify; without one
the catalogue is unsigned, and resolving from it says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp

from ketch.errors import ImageError, NotFound
from ketch.host import gpg
from ketch.images.download import client_session, describe
from ketch.images.simplestreams import (
    INDEX_PATH,
    Catalog,
    CatalogImage,
    host_arch,
    origin_problem,
    parse_products,
    products_path,
    same_origin,
)
from ketch.images.vault import Vault
from ketch.model import ImageInfo

DEFAULT_REMOTES: Mapping[str, str] = {
    "release": "https://cloud-images.ubuntu.com/releases/",
    "daily": "https://cloud-images.ubuntu.com/daily/",
}
DEFAULT_REMOTE = "release"
HTTPS_ONLY_HOSTS = frozenset({"cloud-images.ubuntu.com"})  # the built-in remotes' server
MAX_CATALOG = 64 << 20  # bytes of one index or products file
UBUNTU_KEYRING = Path("/usr/share/keyrings/ubuntu-cloudimage-keyring.gpg")
BUILTIN_REMOTE = "ketch"
TINY = "tiny"
DEBIAN = "debian-12"
# Debian's names for it, resolved as Multipass 1.16 resolves "debian": the release, its
# codename and its number all name the one Debian image ketch builds (or, with a remote
# called "debian" configured, that remote's image of that name).
DEBIAN_ALIASES = ("debian", "bookworm", "12")
DEBIAN_REMOTE = "debian"


@dataclass(frozen=True)
class FindRow:
    """One line of ``ketch find``: an image, or a remote that could not be read."""

    remote: str
    aliases: tuple[str, ...] = ()
    release: str = ""  # e.g. "24.04 LTS"
    version: str = ""
    description: str = ""  # e.g. "Ubuntu 24.04 LTS"
    os: str = ""
    product: str = ""
    error: str | None = None  # set when the remote was unreachable or broken


def base_url(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def check_remote_url(remote: str, url: str) -> None:
    """Refuse a remote URL ketch will not read catalogues from (see module doc)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ImageError(
            f'remote "{remote}" has an unsupported URL {url!r}',
            hint="a remote's URL starts with https:// (or http://)",
        )
    if parts.scheme != "https" and (parts.hostname or "").lower() in HTTPS_ONLY_HOSTS:
        https = urlunsplit(("https", *parts[1:]))
        raise ImageError(
            f'remote "{remote}" reads {parts.hostname} over {parts.scheme}; '
            "it is served over https only",
            hint=f"ketch set local.remote.{remote}={https}",
        )


async def _get(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Any:
    """GET ``url``: None on 304, else (body, ETag, Last-Modified); the body is bounded."""
    async with session.get(url, headers=headers) as resp:
        if not same_origin(str(resp.url), url):
            raise ImageError(f"{url} redirected to {resp.url}, another server: refused")
        if resp.status == 304:
            return None
        if resp.status != 200:
            raise ImageError(f"{url}: HTTP {resp.status} {resp.reason or ''}".rstrip())
        too_big = ImageError(
            f"{url} is larger than {MAX_CATALOG} bytes, the limit for a catalogue file",
            hint="a remote's index and products files are JSON of a few megabytes",
        )
        if resp.content_length is not None and resp.content_length > MAX_CATALOG:
            raise too_big
        body = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > MAX_CATALOG:
                raise too_big
        return bytes(body), resp.headers.get("ETag"), resp.headers.get("Last-Modified")


def _json(data: bytes, url: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ImageError(f"{url} is not valid JSON: {exc}") from exc


def keyring_for(remote: str, url: str, vault: Vault) -> Path | None:
    """The keyring that verifies ``remote``'s signed catalogue, if there is one.

    ``<vault>/keyrings/<remote>.gpg`` when the user put one there; else, for
    Ubuntu's image server, Ubuntu's cloud image keyring when it is installed.
    """
    mine = vault.keyring(remote)
    if mine.is_file():
        return mine
    if (urlsplit(url).hostname or "").lower() in HTTPS_ONLY_HOSTS and UBUNTU_KEYRING.is_file():
        return UBUNTU_KEYRING
    return None


def unsigned_reason(remote: str, url: str, vault: Vault) -> str:
    """Why ``remote``'s catalogue is read unsigned, and what would change that."""
    if keyring_for(remote, url, vault) is not None:
        return "gpgv is not installed"
    where = str(vault.keyring(remote))
    if (urlsplit(url).hostname or "").lower() in HTTPS_ONLY_HOSTS:
        where += f" or {UBUNTU_KEYRING}"
    return f"there is no keyring for it at {where}"


def signed_path(path: str) -> str:
    """The clearsigned twin of a simplestreams file: ``x.json`` → ``x.sjson``."""
    return path[: -len(".json")] + ".sjson" if path.endswith(".json") else path


async def load_catalog(
    remote: str, url: str, *, vault: Vault, arch: str | None = None, force: bool = False
) -> Catalog:
    """What ``remote`` (at ``url``) offers; ImageError when it cannot be read.

    With a keyring for the remote (:func:`keyring_for`) and ``gpgv``, the
    signed index and products file are read and verified, and anything
    unsigned or badly signed is refused; otherwise the catalogue is read
    unsigned and :attr:`Catalog.signed_by` stays empty.
    """
    root = base_url(url)
    check_remote_url(remote, root)
    keyring = keyring_for(remote, root, vault)
    if keyring is not None and not gpg.available():
        keyring = None
    signed = keyring is not None

    async def checked(data: bytes, what: str) -> tuple[bytes, str]:
        if keyring is None:
            return data, ""
        done = await gpg.verify(data, keyring, what)
        return done.text, done.fingerprint

    index_url = urljoin(root, signed_path(INDEX_PATH) if signed else INDEX_PATH)
    try:
        async with client_session() as session:
            index = await _get(session, index_url, {})
            if index is None:
                raise ImageError(f"{index_url}: HTTP 304 to an unconditional request")
            index_text, signer = await checked(index[0], index_url)
            index_doc = await asyncio.to_thread(_json, index_text, index_url)
            rel = products_path(index_doc, remote=remote)
            products_url = urljoin(root, signed_path(rel) if signed else rel)
            problem = origin_problem(products_url, root, "the index's products file")
            if problem is not None:
                raise ImageError(f'remote "{remote}": {problem}: refused')
            saved = vault.load_catalog(products_url, limit=MAX_CATALOG)
            headers = {}
            if saved is not None and not force:  # force: an unconditional request
                validators = saved[1]
                if "etag" in validators:
                    headers["If-None-Match"] = validators["etag"]
                if "last_modified" in validators:
                    headers["If-Modified-Since"] = validators["last_modified"]
            got = await _get(session, products_url, headers)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise ImageError(
            f'remote "{remote}" ({root}) is unreachable: {describe(exc)}',
            hint="check the network connection, or the remote's URL",
        ) from exc
    if got is None:
        if saved is None:
            raise ImageError(f"{products_url}: HTTP 304 to an unconditional request")
        data = saved[0]  # saved only once verified
    else:
        data, etag, modified = got
        data, _ = await checked(data, products_url)
        vault.store_catalog(products_url, data, etag, modified)
    products = await asyncio.to_thread(_json, data, products_url)  # megabytes for Ubuntu
    found = parse_products(products, remote=remote, base_url=root, arch=arch or host_arch())
    return dataclasses.replace(found, signed_by=signer)


def tiny_row(tiny_info: ImageInfo | None) -> FindRow:
    """The ``ketch find`` line of the built-in tiny image."""
    release = tiny_info.release if tiny_info else "ketch tiny"
    return FindRow(
        remote=BUILTIN_REMOTE,
        aliases=(TINY,),
        release=release,
        version=tiny_info.version if tiny_info else "",
        description=release,
        os="ketch",
        product=tiny_info.id if tiny_info else f"{BUILTIN_REMOTE}:{TINY}",
    )


def debian_row() -> FindRow:
    """The ``ketch find`` line of the Debian 12 cloud image ketch builds on first use."""
    return FindRow(
        remote=BUILTIN_REMOTE,
        aliases=(DEBIAN, *DEBIAN_ALIASES),
        release="12",
        version="",
        description="Debian 12 cloud image (built from Debian packages on first use)",
        os="debian",
        product=f"{BUILTIN_REMOTE}:{DEBIAN}",
    )


def image_row(image: CatalogImage) -> FindRow:
    return FindRow(
        remote=image.remote,
        aliases=image.aliases,
        release=image.release_title or image.release,
        version=image.version,
        description=image.description,
        os=image.os,
        product=image.product,
    )


def _matches(row: FindRow, text: str | None) -> bool:
    if not text:
        return True
    low = text.lower()
    if text in row.aliases or text == row.product:
        return True
    fields = (*row.aliases, row.release, row.description)
    return any(low in f.lower() for f in fields)


def split_query(query: str | None, remotes: Mapping[str, str]) -> tuple[list[str], str | None]:
    """The remotes a ``find`` query covers and the text it filters with."""
    names = [BUILTIN_REMOTE, *remotes]
    if query and ":" in query:
        remote, text = query.split(":", 1)
        if remote not in names:
            raise NotFound(
                f'remote "{remote}" is not known',
                hint="known remotes: " + ", ".join(names),
            )
        return [remote], text or None
    return names, query or None


async def find(
    query: str | None,
    *,
    remotes: Mapping[str, str],
    vault: Vault,
    tiny_info: ImageInfo | None,
    show_unsupported: bool = False,
    force_update: bool = False,
) -> list[FindRow]:
    """The images ``ketch find [QUERY]`` lists; a failing remote becomes an error row."""
    names, text = split_query(query, remotes)

    async def one(remote: str) -> list[FindRow]:
        if remote == BUILTIN_REMOTE:
            return [tiny_row(tiny_info), debian_row()]
        try:
            catalog = await load_catalog(remote, remotes[remote], vault=vault, force=force_update)
        except ImageError as exc:
            return [FindRow(remote=remote, error=exc.message)]
        return [image_row(image) for image in catalog.images if image.supported or show_unsupported]

    per_remote = await asyncio.gather(*(one(name) for name in names))
    return [
        row for rows in per_remote for row in rows if row.error is not None or _matches(row, text)
    ]
