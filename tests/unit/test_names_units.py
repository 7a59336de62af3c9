"""Instance names (hostname rules, random names) and sizes (``512M``, ``1G`` ...)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketch.errors import EXIT_USAGE, InvalidArgument
from ketch.service import names, units
from ketch.service.names import random_name, validate
from ketch.service.units import human, parse_size

# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a", id="one-letter"),
        pytest.param("vm1", id="letters-digits"),
        pytest.param("my-vm", id="hyphen-inside"),
        pytest.param("a--b", id="double-hyphen"),
        pytest.param("Primary", id="upper-case"),
        pytest.param("a" * 63, id="63-chars"),
        pytest.param("a" + "-" * 61 + "b", id="63-chars-mostly-hyphens"),
    ],
)
def test_valid_names(name: str) -> None:
    assert validate(name) == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("1vm", id="leading-digit"),
        pytest.param("-vm", id="leading-hyphen"),
        pytest.param("vm-", id="trailing-hyphen"),
        pytest.param("a" * 64, id="64-chars"),
        pytest.param("", id="empty"),
        pytest.param("vé", id="unicode-letter"),
        pytest.param("ｖｍ", id="fullwidth-letters"),
        pytest.param("vm٣", id="unicode-digit"),
        pytest.param("vm_1", id="underscore"),
        pytest.param("vm 1", id="space"),
        pytest.param("vm/1", id="slash"),
        pytest.param("vm\t1", id="tab"),
    ],
)
def test_invalid_names_follow_hostname_rules(name: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate(name)
    # Multipass's sentence (src/client/cli/cmd/launch.cpp: "Invalid instance name supplied: {}")
    assert err.value.message == f"Invalid instance name supplied: {name}"
    assert err.value.hint and "hostname rules" in err.value.hint
    assert "must start with a letter" in err.value.hint
    assert err.value.exit_code == EXIT_USAGE


@pytest.mark.parametrize("name", ["vm.1", "a.b.c", ".", "../etc"])
def test_dot_is_reserved_for_snapshots(name: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate(name)
    assert err.value.message == f"Invalid instance name supplied: {name}"
    assert err.value.hint and "separates an instance from a snapshot" in err.value.hint
    with pytest.raises(InvalidArgument, match="separates an instance from a snapshot"):
        validate(name, "snapshot")


def test_trailing_newline_is_not_a_valid_name() -> None:
    with pytest.raises(InvalidArgument):
        validate("vm\n")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=70))
def test_property_valid_names_are_hostname_labels(name: str) -> None:
    """Whatever validate accepts is an ASCII hostname label of 1..63 characters."""
    try:
        validate(name)
    except InvalidArgument:
        return
    assert 1 <= len(name) <= 63
    assert name.isascii() and name[0].isalpha() and name[-1] != "-"
    assert all(c.isalnum() or c == "-" for c in name)


def test_random_names_are_valid_and_unique() -> None:
    taken: set[str] = set()
    for _ in range(300):
        name = random_name(taken)
        assert validate(name) == name
        assert name not in taken
        taken.add(name)


def test_random_name_never_returns_a_taken_name_when_most_are_taken() -> None:
    every = sorted(f"{a}-{n}" for a in names._ADJECTIVES for n in names._NOUNS)
    taken = set(every[: len(every) - 3])  # three pairs left: found, or the fallback
    for _ in range(20):
        name = random_name(taken)
        assert name not in taken
        assert validate(name) == name
        assert name in every[-3:] or name.startswith("ketch-")


def test_random_name_when_every_pair_is_taken_is_still_valid() -> None:
    every = {f"{a}-{n}" for a in names._ADJECTIVES for n in names._NOUNS}
    name = random_name(every)
    assert name not in every
    assert name.startswith("ketch-")
    assert validate(name) == name


# -- sizes ---------------------------------------------------------------------------------

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512M", 512 * MiB),
        ("1G", GiB),
        ("1GiB", GiB),
        ("1GB", GiB),
        ("1.5G", GiB + GiB // 2),
        ("1073741824", GiB),
        ("0", 0),
        ("4K", 4 * KiB),
        ("4KiB", 4 * KiB),
        ("2T", 2 * TiB),
        ("512m", 512 * MiB),
        ("1g", GiB),
        (" 5G ", 5 * GiB),
        ("5 G", 5 * GiB),
        ("0.5M", MiB // 2),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text, "disk") == size


@pytest.mark.parametrize(
    "text",
    ["", "abc", "G", "-1G", "1P", "1e3", "1.2.3G", "1 0G", ".5G", "1.", "1GiBs", "5 GB B", "0x10"],
)
def test_bad_size_is_invalid_argument_with_a_hint(text: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_size(text, "memory")
    # Multipass's sentence (include/multipass/exceptions/invalid_memory_size_exception.h)
    assert err.value.message == (
        f"{text} is not a valid memory size - need a non-negative integer (in base 10) "
        "or a decimal followed by K, M, or G (e.g. 1234B, 42MiB, 0.5G)"
    )
    assert err.value.hint and "512M" in err.value.hint
    assert err.value.code == "invalid-argument"
    assert err.value.exit_code == EXIT_USAGE


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 4096), st.sampled_from(["", "K", "M", "G", "T"]))
def test_property_units_are_binary(n: int, unit: str) -> None:
    factor = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}[unit]
    assert parse_size(f"{n}{unit}", "disk") == n * factor
    if unit:
        assert parse_size(f"{n}{unit}iB", "disk") == n * factor


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0B"), (1023, "1023B"), (KiB, "1.0KiB"), (512 * MiB, "512.0MiB"), (GiB, "1.0GiB"),
     (5 * TiB, "5.0TiB"), (2048 * TiB, "2048.0TiB")],
)  # fmt: skip
def test_human(n: int, text: str) -> None:
    assert human(n) == text


def test_human_and_parse_agree_on_round_sizes() -> None:
    for n in (KiB, 3 * MiB, 7 * GiB, 2 * TiB):
        shown = units.human(n)
        assert parse_size(shown.replace(".0", ""), "x") == n
