"""Issue 12, item 4: a user's cloud-init cannot make ketchd build something huge.

Each attack is performed on the real parser: the gz+b64 alias bomb, a
billion-laughs document, a self-referring alias, a node flood, an oversize
file.  Each must be refused with exit code 1 and the limit named, without the
refused thing ever being built; a legitimate 1.7 MB file still parses.
"""

from __future__ import annotations

import base64
import gzip
import os

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ketch import cloudinit, cloudlimits
from ketch.cloudlimits import MAX_DECODED, MAX_NODES, MAX_USER_DATA, MiB
from ketch.errors import InvalidArgument
from ketch.host import seed


def _refused(doc: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        cloudinit.parse_user_data(doc)
    assert err.value.exit_code == 1
    return err.value


def test_gz_b64_alias_bomb_is_refused_before_it_is_inflated() -> None:
    # The 87 KB file: 64 MiB of zeros, gzipped, base64, repeated through aliases.
    payload = base64.b64encode(gzip.compress(b"\0" * (64 * MiB))).decode()
    doc = (
        "#cloud-config\nwrite_files:\n"
        f"  - &f {{path: /a, encoding: gz+b64, content: {payload}}}\n" + "  - *f\n" * 10
    )
    assert len(doc) < 90_000
    err = _refused(doc)
    assert "write_files contents decode to more than 16777216 bytes" in err.message
    assert "16 MiB" in err.message and err.hint and "ketch transfer" in err.hint


def test_small_gzip_files_repeated_through_aliases_count_each_time() -> None:
    one = base64.b64encode(gzip.compress(b"x" * MiB)).decode()
    entry = f"  - &f {{path: /a, encoding: gzip+base64, content: {one}}}\n"
    ok = "#cloud-config\nwrite_files:\n" + entry + "  - *f\n" * 15
    assert len(cloudinit.parse_user_data(ok)["write_files"]) == 16
    _refused("#cloud-config\nwrite_files:\n" + entry + "  - *f\n" * 16)  # 17 MiB


def test_billion_laughs_is_refused_by_its_expanded_size() -> None:
    doc = "#cloud-config\na0: &a0 [" + ", ".join(["x" * 100] * 10) + "]\n"
    for i in range(1, 9):
        doc += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n"
    doc += "runcmd: *a8\n"
    err = _refused(doc)
    assert "expands to more than 16777216 bytes through YAML aliases" in err.message


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    err = _refused("#cloud-config\nrepeat: &a [1, *a]\n")
    assert "alias to a node that contains it" in err.message


def test_a_node_flood_is_refused_while_composing() -> None:
    doc = "#cloud-config\npackages:\n" + "- a\n" * (MAX_NODES + 10)
    err = _refused(doc)
    assert f"more than {MAX_NODES} YAML nodes" in err.message


def test_deep_nesting_is_refused() -> None:
    err = _refused("#cloud-config\na: " + "[" * 5000)
    assert "not valid YAML" in err.message or "nested too deeply" in err.message


def test_a_file_over_the_size_limit_is_refused_by_size() -> None:
    doc = "#cloud-config\nbig: " + "y" * MAX_USER_DATA + "\n"
    err = _refused(doc)
    assert f"over ketch's limit of {MAX_USER_DATA} bytes (4 MiB)" in err.message


def test_a_legitimate_1_7_mb_file_parses_and_renders() -> None:
    content = os.urandom(1_250_000)
    doc = (
        "#cloud-config\npackages: [curl, git]\nwrite_files:\n  - path: /opt/blob\n"
        f"    encoding: b64\n    content: {base64.b64encode(content).decode()}\n"
        "runcmd:\n  - [sh, -c, 'wc -c /opt/blob']\n"
    )
    assert 1_600_000 < len(doc) < MAX_USER_DATA
    cfg = cloudinit.parse_user_data(doc)
    assert cloudlimits.check_write_files(cfg) == len(content)
    rendered = seed.render_guest_config(cfg, {"instance-id": "i-1", "local-hostname": "a"})
    assert base64.b64encode(content).decode() in rendered


def test_shared_nodes_are_measured_once_and_fit() -> None:
    node = yaml.compose("a: &x [" + ", ".join(["word"] * 100) + "]\nb: [*x, *x, *x]\n")
    assert node is not None
    one = 1 + 100 * 5  # the list and its scalars
    assert cloudlimits.expanded_size(node) == 1 + (2 + one) + (2 + 1 + 3 * one)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(max_size=3000), min_size=1, max_size=4),
    st.integers(min_value=0, max_value=4),
)
def test_bounded_gunzip_counts_what_gzip_inflates(members: list[bytes], padding: int) -> None:
    data = b"".join(gzip.compress(m) + b"\0" * padding for m in members)
    total = len(gzip.decompress(data))
    assert cloudlimits._gunzip_size(data, MAX_DECODED) == total
    if total:
        assert cloudlimits._gunzip_size(data, total - 1) == total  # stops just past the budget


def test_bounded_gunzip_never_inflates_far_past_the_budget() -> None:
    bomb = gzip.compress(b"\0" * (256 * MiB))
    assert cloudlimits._gunzip_size(bomb, 1000) == 1001


def test_truncated_or_corrupt_gzip_is_left_to_the_renderer_which_names_the_file() -> None:
    good = gzip.compress(b"hello" * 1000)
    for bad in (good[: len(good) // 2], b"\x1f\x8b" + b"junk" * 10):
        b64 = base64.b64encode(bad).decode()
        cfg = cloudinit.parse_user_data(
            f"#cloud-config\nwrite_files: [{{path: /p, encoding: gz+b64, content: {b64}}}]\n"
        )
        with pytest.raises(InvalidArgument, match="write_files /p: content is not valid"):
            seed.render_guest_config(cfg, {"instance-id": "i-1"})
