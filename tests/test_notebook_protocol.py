"""Rules every committed notebook follows, checked on its source: choices on validation, seeds, silent solutions.

The selection rule is a lint over the code cells: a line that picks a winner (``idxmax``,
``idxmin``, ``argmax``, ``argmin``, ``sort_values``, ``best_on_validation``,
``pick_on_validation``) must not mention a test split. Test scores reach a notebook through
``compare(..., score_test=...)``, which scores the test split once per arm after every choice
was made on validation, or through a final scoring cell.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9]*.ipynb"))
SELECTION = re.compile(r"\b(idxmax|idxmin|argmax|argmin|sort_values|best_on_validation|pick_on_validation)\b")
TEST_SPLIT = re.compile(r"test", re.IGNORECASE)


def code_cells(path: Path) -> list[tuple[int, dict, str]]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(i, cell, "".join(cell["source"])) for i, cell in enumerate(cells) if cell["cell_type"] == "code"]


def selection_lines_on_test(source: str) -> list[str]:
    """Lines of ``source`` that select something and mention a test split."""
    return [line.strip() for line in source.splitlines()
            if SELECTION.search(line) and TEST_SPLIT.search(line.split("#")[0])]


def test_the_lint_catches_a_choice_on_test_and_passes_one_on_validation():
    assert selection_lines_on_test('best = table["test_mean"].idxmax()')
    assert selection_lines_on_test("lam = sweep.sort_values('test_accuracy').index[-1]")
    assert not selection_lines_on_test('best = table["val_mean"].idxmax()  # test is scored once, later')
    assert not selection_lines_on_test("logits.argmax(-1)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_notebook_makes_a_choice_on_its_test_split(path):
    offending = [(i, line) for i, _, source in code_cells(path) for line in selection_lines_on_test(source)
                 if "argmax(-1)" not in line and "argmax(dim=-1)" not in line]   # per-example predictions
    assert not offending, f"{path.name}: a choice that reads the test split (cell, line): {offending}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_settings_cell_sets_a_seed_the_notebook_can_be_rerun_with(path):
    settings = [source for _, _, source in code_cells(path)[:3] if re.search(r"^SEED = 0\b", source, re.M)]
    assert settings, f"{path.name}: one of the first code cells must set SEED = 0 (the committed run's seed)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_solution_cells_are_hidden_and_print_nothing(path):
    for i, cell, source in code_cells(path):
        if "solution" in cell.get("metadata", {}).get("tags", []):
            assert cell["metadata"].get("jupyter", {}).get("source_hidden"), f"{path.name} cell {i}: not collapsed"
            printed = [o for o in cell.get("outputs", []) if o.get("output_type") in ("stream", "execute_result")]
            assert not printed, f"{path.name} cell {i}: a solution cell shows output, which gives the answer away"
            assert "solved(" in source, f"{path.name} cell {i}: a solution must end with assert solved(check, value)"
