"""The tiny image's fast path: a build newer than apt's lists, from the same guest files."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path

from ketch.images import tiny


def make_build(tiny_dir: Path, key: str, guest: str, mtime: float) -> Path:
    d = tiny_dir / key
    d.mkdir(parents=True)
    files = {}
    for name in tiny.IMAGE_FILES:
        data = f"{key}:{name}".encode()
        (d / name).write_bytes(data)
        files[name] = (hashlib.sha256(data).hexdigest(), len(data))
    manifest = tiny.make_manifest(
        key=key,
        packages={"busybox-static": "1"},
        files=files,
        kernel_version="6.1.0-test-cloud-amd64",
        guest=guest,
        built=datetime.datetime.fromtimestamp(mtime, datetime.UTC),
    )
    (d / tiny.MANIFEST).write_text(json.dumps(manifest))
    os.utime(d / tiny.MANIFEST, (mtime, mtime))
    return d


def test_a_build_newer_than_the_apt_lists_is_used(tmp_path: Path) -> None:
    make_build(tmp_path, "aaaa", "digest-1", mtime=2000.0)
    info = tiny.fresh(tmp_path, "digest-1", lists_changed=1000.0)
    assert info is not None and info.id.endswith("@aaaa")


def test_a_build_older_than_the_apt_lists_is_not_trusted(tmp_path: Path) -> None:
    make_build(tmp_path, "aaaa", "digest-1", mtime=1000.0)
    assert tiny.fresh(tmp_path, "digest-1", lists_changed=2000.0) is None


def test_other_guest_files_or_unknown_lists_mean_no_fast_path(tmp_path: Path) -> None:
    make_build(tmp_path, "aaaa", "digest-1", mtime=2000.0)
    assert tiny.fresh(tmp_path, "digest-2", lists_changed=1000.0) is None
    assert tiny.fresh(tmp_path, "digest-1", lists_changed=None) is None


def test_a_damaged_build_is_skipped(tmp_path: Path) -> None:
    d = make_build(tmp_path, "aaaa", "digest-1", mtime=2000.0)
    (d / tiny.DISK).write_bytes(b"tampered")
    assert tiny.fresh(tmp_path, "digest-1", lists_changed=1000.0) is None


def test_apt_lists_changed_reads_the_newest_file(tmp_path: Path) -> None:
    for name, when in (("a_Packages", 100.0), ("b_Packages", 300.0)):
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (when, when))
    assert tiny.apt_lists_changed(tmp_path) == 300.0
    assert tiny.apt_lists_changed(tmp_path / "missing") is None


def test_newest_built_ignores_checksums_and_picks_the_newest(tmp_path: Path) -> None:
    make_build(tmp_path / tiny.NAME, "old", "g", mtime=1000.0)
    make_build(tmp_path / tiny.NAME, "new", "g", mtime=2000.0)
    info = tiny.newest_built(tmp_path)
    assert info is not None and info.id.endswith("@new")


def test_fresh_build_finds_the_build_of_these_guest_files(tmp_path: Path) -> None:
    """What the daemon asks in its own process before it starts a build child: a build
    of ketch's current guest files, newer than this host's apt lists."""
    import time

    import pytest

    if tiny.apt_lists_changed() is None:
        pytest.skip("this host has no apt lists: no build is ever trusted without asking apt")
    newer = max(time.time(), tiny.apt_lists_changed() or 0.0) + 60
    assert tiny.fresh_build(tmp_path) is None  # nothing built yet
    make_build(tmp_path / tiny.NAME, "other", "not-these-files", mtime=newer)
    assert tiny.fresh_build(tmp_path) is None
    make_build(tmp_path / tiny.NAME, "mine", tiny.guest_digest(), mtime=newer)
    info = tiny.fresh_build(tmp_path)
    assert info is not None and info.id.endswith("@mine")
