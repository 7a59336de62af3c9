"""``docs/multipass.md`` against ketch's parser: the table of verbs and flags cannot drift.

Each row says a verb (or a verb's flag) is *same*, *differs*, *ketch adds* or
*missing*.  The first three must exist in ``build_parser()``, *missing* must
not, and every verb, alias and flag of the parser must have a row.  A verb
added to the parser without a row fails here, and so does a row marked
*missing* once the verb exists: the table is updated with the code.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from ketch.cli.parser import build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "multipass.md"
STATUSES = ("same", "differs", "ketch adds", "missing")
GLOBAL = "(global)"
VERB_ROW = "—"
HELP_FLAGS = {"-h", "--help"}  # every verb takes them; the table says so once


def rows() -> list[tuple[str, tuple[str, ...], str]]:
    """``(verb, flags, status)`` per table row; ``flags`` empty for the verb's own row."""
    found = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("Verb", "") or set(cells[0]) <= {"-"}:
            continue
        verb, flag_cell, status, _ = cells
        assert status in STATUSES, f"unknown status {status!r} in: {line}"
        flags = () if flag_cell == VERB_ROW else tuple(re.findall(r"`([^`]+)`", flag_cell))
        assert flag_cell == VERB_ROW or flags, f"no flag in: {line}"
        found.append((verb, flags, status))
    return found


def aliases() -> set[str]:
    """The verbs' other names (``ls`` for ``list``, ...): their sub-parser is the verb's."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name for name, verb in sub.choices.items() if verb.prog.split()[-1] != name}


def parser_table() -> dict[str, set[str]]:
    """Every verb (and alias) of the parser with its option strings; ``(global)`` too."""
    parser = build_parser()
    table = {GLOBAL: {s for a in parser._actions for s in a.option_strings}}
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, verb in sub.choices.items():
        table[name] = {s for a in verb._actions for s in a.option_strings} - HELP_FLAGS
    return table


def test_the_table_is_well_formed() -> None:
    found = rows()
    assert len(found) > 50
    keys = [(verb, flags) for verb, flags, _ in found]
    assert len(keys) == len(set(keys)), "a row is listed twice"
    verbs = {verb for verb, flags, _ in found if not flags}
    for verb, flags, _ in found:
        assert verb == GLOBAL or verb in verbs, f"{verb} {flags}: its verb has no row"


def row_id(value: object) -> str:
    return (" ".join(value) or "verb") if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize(("verb", "flags", "status"), rows(), ids=row_id)
def test_each_row_says_what_the_parser_has(verb: str, flags: tuple[str, ...], status: str) -> None:
    table = parser_table()
    if not flags:  # the verb itself
        if status == "missing":
            assert verb not in table, f"'{verb}' exists now: update docs/multipass.md"
        else:
            assert verb in table, f"'{verb}' is not a verb of ketch's parser"
        return
    have = table.get(verb, set())
    for flag in flags:
        if status == "missing":
            assert flag not in have, f"'{verb} {flag}' exists now: update docs/multipass.md"
        else:
            assert flag in have, f"'{verb} {flag}' is not in ketch's parser"


def test_every_verb_and_flag_of_the_parser_has_a_row() -> None:
    alias_names = aliases()
    documented: dict[str, set[str]] = {}
    verbs = set()
    for verb, flags, status in rows():
        if status == "missing":
            continue
        if not flags:
            verbs.add(verb)
        documented.setdefault(verb, set()).update(flags)
    for verb, options in parser_table().items():
        assert verb == GLOBAL or verb in verbs, f"'{verb}' has no row in docs/multipass.md"
        if verb in alias_names:  # an alias: its flags are its verb's, checked there
            continue
        undocumented = options - documented.get(verb, set())
        assert not undocumented, f"'{verb}' flags without a row: {sorted(undocumented)}"
