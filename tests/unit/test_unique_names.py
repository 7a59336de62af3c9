"""Test modules have names unique across ``tests/unit`` and ``tests/integration``.

pytest imports test files by basename (no ``__init__.py`` packages here), so two
``test_x.py`` in the two directories stop the whole run at collection, before
any test runs; this catches it in the unit run, with the names to change.
"""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_test_module_name_is_in_both_directories() -> None:
    unit = {p.name for p in (TESTS / "unit").glob("*.py")}
    integration = {p.name for p in (TESTS / "integration").glob("*.py")}
    assert unit & integration == set()
