"""The documents' vocabulary tables are generated from the enums and cannot go stale.

``python -m ketch.docgen`` writes the truth table, the QMP run states, the
verbs per state, the operation kinds and the codes into docs/internals.md and
docs/reliability.md; this test fails when a document is not what it would
write (run ``python -m ketch.docgen`` to bring it up to date).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ketch import docgen
from ketch.codes import CODES
from ketch.model import InconsistencyCode, RunState, State, Verb


def test_the_documents_are_up_to_date() -> None:
    assert docgen.stale() == [], "run: python -m ketch.docgen"
    assert docgen.main(["docgen", "--check"]) == 0


def test_a_stale_document_is_found_and_rewritten(tmp_path: Path) -> None:
    for name in docgen.TABLES:
        shutil.copy(docgen.DOCS / name, tmp_path / name)
    doc = tmp_path / "internals.md"
    text = doc.read_text()
    doc.write_text(text.replace("`paused-io-error`", "`guest-halted`"))
    assert docgen.stale(tmp_path) == ["internals.md"]
    doc.write_text(docgen.render(doc.read_text(), docgen.TABLES["internals.md"]))
    assert doc.read_text() == text
    assert docgen.stale(tmp_path) == []


def test_a_missing_marker_is_an_error() -> None:
    with pytest.raises(ValueError, match="truth-table"):
        docgen.render("no markers here\n", docgen.TABLES["internals.md"])


def test_the_tables_name_every_word() -> None:
    internals = (docgen.DOCS / "internals.md").read_text()
    reliability = (docgen.DOCS / "reliability.md").read_text()
    for state in RunState:
        assert f"| `{state}` |" in internals, state
    for code in CODES:
        assert f"| `{code}` |" in internals, code
    for code in InconsistencyCode:
        assert f"| `{code}` |" in reliability, code
    verbs = docgen.verbs_per_state()
    for s in State:
        assert f"| {s.value} |" in verbs
    assert all(f"`{v}`" in verbs for v in Verb)


def test_the_truth_table_is_computed_by_derive() -> None:
    """Its last two columns are what derive() says, so io-error reads paused-io-error."""
    rows = {line.split(" | ")[4]: line for line in docgen.truth_table().splitlines()[2:]}
    assert rows["io-error"].endswith("| Unknown | `paused-io-error` |")
    assert "guest-halted" not in rows["io-error"]
    assert rows["paused, prelaunch, postmigrate, watchdog"].endswith("| `paused` |")
