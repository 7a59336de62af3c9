"""Debian's names for the Debian image (issue 17): ``debian``, ``bookworm``, ``12``.

Multipass 1.16 resolves ``debian`` to Debian's image; ketch maps Debian's names to
the ``debian-12`` image it builds offline, or to a configured ``debian`` remote.
The resolver runs for real; the builders and the remote read are stand-ins that
record what they were asked for.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ketch.images import resolve as resolve_mod
from ketch.images.catalog import debian_row
from ketch.images.vault import Vault
from ketch.model import BootSpec, ImageInfo
from ketch.progress import NULL, Reporter


def info(name: str) -> ImageInfo:
    return ImageInfo(
        id=f"ketch:{name}@1", release=name, disk=f"/vault/{name}.qcow2", disk_format="qcow2",
        boot=BootSpec(),
    )  # fmt: skip


def run_resolve(
    ref: str, tmp_path: Path, remotes: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[ImageInfo, list[Any]]:
    asked: list[Any] = []

    async def build_tiny(reporter: Reporter) -> ImageInfo:
        asked.append("build tiny")
        return info("tiny")

    async def build_debian(reporter: Reporter) -> ImageInfo:
        asked.append("build debian-12")
        return info("debian-12")

    async def from_remote(
        remote: str, alias: str, url: str, vault: Vault, reporter: Reporter
    ) -> ImageInfo:
        asked.append((remote, alias))
        return info(f"{remote}-{alias}")

    monkeypatch.setattr(resolve_mod, "_from_remote", from_remote)
    got = asyncio.run(
        resolve_mod.resolve(
            ref,
            remotes=remotes,
            vault=Vault(tmp_path / "vault"),
            build_tiny=build_tiny,
            build_debian=build_debian,
            reporter=NULL,
        )
    )
    return got, asked


@pytest.mark.parametrize(
    "ref", ["debian", "bookworm", "12", "Debian", "debian-12", "ketch:debian", "ketch:12"]
)
def test_debian_names_are_the_debian_12_image(
    ref: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remotes = {"release": "https://cloud-images.ubuntu.com/releases/"}
    got, asked = run_resolve(ref, tmp_path, remotes, monkeypatch)
    assert asked == ["build debian-12"] and got.release == "debian-12"


@pytest.mark.parametrize("ref", ["debian", "bookworm", "12"])
def test_a_configured_debian_remote_serves_debian_names(
    ref: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remotes = {"release": "https://example.invalid/u/", "debian": "https://example.invalid/d/"}
    _, asked = run_resolve(ref, tmp_path, remotes, monkeypatch)
    assert asked == [("debian", ref)]
    _, asked = run_resolve("ketch:debian-12", tmp_path, remotes, monkeypatch)
    assert asked == ["build debian-12"]  # the built image is still there by its own name


def test_other_names_still_go_to_the_default_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remotes = {"release": "https://example.invalid/u/"}
    assert run_resolve("noble", tmp_path, remotes, monkeypatch)[1] == [("release", "noble")]
    assert run_resolve("24.04", tmp_path, remotes, monkeypatch)[1] == [("release", "24.04")]


def test_find_lists_debians_names_as_aliases() -> None:
    assert debian_row().aliases == ("debian-12", "debian", "bookworm", "12")
