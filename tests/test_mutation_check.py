"""scripts/mutation_check.py plants each named bug by replacing one exact piece of text. A refactor
that moves or duplicates that text makes the mutant stale: the script then reports it instead of
planting it, and the bug it stood for goes unguarded without any test failing. Two mutants had gone
stale that way; this keeps every one pointing at exactly one place, and every test it names present."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mutants():
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "scripts" / "mutation_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutation_check", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.MUTANTS


MUTANTS = _mutants()


def test_mutant_names_are_unique():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_mutant_plants_at_exactly_one_place_and_names_existing_tests(mutant):
    text = (ROOT / mutant.file).read_text()
    assert text.count(mutant.old) == 1, (
        f"mutant {mutant.name!r}: its text occurs {text.count(mutant.old)} times in {mutant.file}; "
        "point it at the code's new place (scripts/mutation_check.py)"
    )
    assert mutant.new != mutant.old
    for test in mutant.tests:
        path = ROOT / test.split("::")[0]
        assert path.is_file(), f"mutant {mutant.name!r} names a missing test file {test}"
        if "::" in test:
            assert f"def {test.split('::')[1].split('[')[0]}(" in path.read_text(), f"{test} not found"
