"""ketch.safetar under random hostile archives (hypothesis, bounded count, no deadline).

Archives are drawn from a small alphabet of names, ``..`` and link targets,
so that links, links through links and files through links meet often.
Whatever the archive, extraction either succeeds or raises GuestError, and
afterwards nothing beside the destination changed and every path in the
unpacked tree resolves inside it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from hostile_tar import Member, archive
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketch.errors import GuestError
from ketch.safetar import extract_tree

COMPONENT = st.sampled_from(["a", "b", "c", "..", ".", "top"])
PATH = st.lists(COMPONENT, min_size=1, max_size=4).map("/".join)
NAME = st.one_of(PATH.map(lambda p: "./top/" + p), PATH, PATH.map(lambda p: "/" + p))
TARGET = st.one_of(PATH, PATH.map(lambda p: "/" + p), st.just("../.."), st.just("."))
MEMBER = st.one_of(
    st.tuples(st.just("dir"), NAME, st.just("")),
    st.tuples(st.just("file"), NAME, st.sampled_from(["", "x", "pwned"])),
    st.tuples(st.just("sym"), NAME, TARGET),
    st.tuples(st.just("hard"), NAME, st.one_of(NAME, TARGET)),
)


def snapshot(root: Path, skip: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == skip or skip in here.parents:
            dirnames.clear()
            continue
        for name in dirnames + filenames:
            path = here / name
            out[str(path)] = os.readlink(path) if path.is_symlink() else "present"
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MEMBER, min_size=1, max_size=8))
def test_random_archives_stay_inside(members: list[Member]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        dest = base / "dest"
        dest.mkdir()
        (base / "outside").write_text("host\n")
        before = snapshot(base, dest)
        with contextlib.suppress(GuestError):  # a refusal is fine; what follows must hold
            extract_tree(archive(("dir", "./top", ""), *members), dest, "top", "top")
        assert snapshot(base, dest) == before
        assert (base / "outside").read_text() == "host\n"
        top = (dest / "top").resolve()
        for dirpath, dirnames, filenames in os.walk(dest):
            for name in dirnames + filenames:
                real = Path(os.path.realpath(Path(dirpath) / name))
                assert real == top or top in real.parents, (Path(dirpath) / name, real)
