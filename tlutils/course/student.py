"""Student copies of the notebooks: solutions out, stubs in, everything else still executed.

A solution cell (tagged ``solution``) becomes a stub that says which answer variable to fill in:
the exercise cell above it keeps ``answer_1 = None`` and its check, so a student copy still runs
top to bottom and each check prints "Not answered yet". (nbgrader's default stub also raises
``NotImplementedError``; here that would stop "Run all" at the first exercise, so the stub is the
marker and comments only, and the unanswered variable is what stays ``None``.) The outputs of exercise and solution
cells are cleared; every other cell keeps its committed outputs, so students see the plots.

The stub cells carry nbgrader's cell metadata (``nbgrader.solution``, a ``grade_id``) and the
code marker ``# YOUR CODE HERE``, so the copies open in nbgrader as assignments with one answer
cell per exercise. :func:`restore_solutions` puts the solutions back (matched by cell id), which
is how the tests check that a student copy with its answers filled in passes nbval again.
"""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

from tlutils.core.io import atomic_file

SOLUTION_TAG = "solution"
STUB_TAG = "student-stub"
CODE_MARKER = "# YOUR CODE HERE"
_NBGRADER_SCHEMA = 3


def is_solution(cell: dict) -> bool:
    """True for a code cell tagged ``solution``."""
    return cell.get("cell_type") == "code" and SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def _parse(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except SyntaxError:  # IPython magics: not Python, and never an exercise
        return None


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def calls_a_check(cell: dict) -> bool:
    """True for an exercise cell: a code cell that calls a ``check_...`` function."""
    tree = _parse(_source(cell)) if cell.get("cell_type") == "code" else None
    return tree is not None and any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("check_")
        for node in ast.walk(tree))


def answer_names(cell: dict) -> list[str]:
    """The variables an exercise cell leaves for the learner: top-level ``name = None`` assignments."""
    tree = _parse(_source(cell)) if cell.get("cell_type") == "code" else None
    if tree is None:
        return []
    return [target.id for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and node.value.value is None
            for target in node.targets if isinstance(target, ast.Name)]


def _check_name(solution_source: str) -> str | None:
    """The check a solution cell runs: the first argument of ``solved(check, ...)``."""
    tree = _parse(solution_source)
    for node in ast.walk(tree) if tree else ():
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "solved"
                and node.args and isinstance(node.args[0], ast.Name)):
            return node.args[0].id
    return None


def stub_source(answers: list[str], check: str | None) -> str:
    """The code of a stub cell: where to put the answer, and how to check it (runs as a no-op)."""
    names = " and ".join(answers) or "the answer variable"
    lines = [f"{CODE_MARKER}: the solution was removed from this copy.",
             f"# Work out your answer, put it in {names} in the exercise cell above (None until then)"]
    if check:
        args = ", ".join(answers) if answers else "..."
        lines.append(f"# and run that cell again, or compute it here and call {check}({args}).")
    else:
        lines.append("# and run that cell again: its check says whether you are right.")
    return "\n".join(lines) + "\n"


def _cleared(cell: dict) -> dict:
    cell = copy.deepcopy(cell)
    cell["outputs"], cell["execution_count"] = [], None
    cell.get("metadata", {}).pop("execution", None)
    return cell


def student_copy(notebook: dict, name: str = "notebook") -> dict:
    """A student copy of ``notebook`` (parsed JSON; not changed).

    Args:
        notebook: The executed notebook with its solution cells.
        name: Its file stem, used in nbgrader's ``grade_id`` of each stub (``00_setup_and_tour-exercise-1``).

    Returns:
        The copy: solution cells replaced by stubs, exercise and solution outputs cleared.
    """
    student = copy.deepcopy(notebook)
    cells, answers, number = [], [], 0
    for cell in notebook.get("cells", []):
        if is_solution(cell):
            number += 1
            stub = _cleared(cell)
            stub["source"] = stub_source(answers, _check_name(_source(cell)))
            metadata = stub.setdefault("metadata", {})
            metadata.pop("jupyter", None)  # a stub is meant to be seen: not collapsed like the solution was
            metadata["tags"] = [STUB_TAG if tag == SOLUTION_TAG else tag for tag in metadata.get("tags", [])]
            metadata["nbgrader"] = {"grade": False, "grade_id": f"{name}-exercise-{number}", "locked": False,
                                    "schema_version": _NBGRADER_SCHEMA, "solution": True, "task": False}
            cells.append(stub)
            answers = []
        elif calls_a_check(cell):
            answers += [a for a in answer_names(cell) if a not in answers]
            cells.append(_cleared(cell))
        else:
            answers += [a for a in answer_names(cell) if a not in answers]
            cells.append(copy.deepcopy(cell))
    student["cells"] = cells
    return student


def restore_solutions(student: dict, source: dict) -> dict:
    """``student`` with every stub replaced by the solution cell of the same id in ``source``.

    Raises:
        ValueError: a stub has no solution of its id in ``source`` (the copy is from another notebook).
    """
    solutions = {cell.get("id"): cell for cell in source.get("cells", []) if is_solution(cell)}
    restored = copy.deepcopy(student)
    for index, cell in enumerate(restored["cells"]):
        if STUB_TAG in cell.get("metadata", {}).get("tags", []):
            if cell.get("id") not in solutions:
                raise ValueError(f"stub {cell.get('id')!r} has no solution cell of that id in the source notebook")
            restored["cells"][index] = _cleared(solutions[cell["id"]])
    return restored


def _names(tree: ast.Module | None) -> tuple[set[str], set[str]]:
    """(names a cell binds, names it reads)."""
    if tree is None:
        return set(), set()
    stored, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (stored if isinstance(node.ctx, (ast.Store, ast.Del)) else read).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stored.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            stored |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    local = {name.id for node in ast.walk(tree) if isinstance(node, ast.comprehension)
             for name in ast.walk(node.target) if isinstance(name, ast.Name)}
    return stored - local, read - local  # a comprehension's own variables are neither


def solution_dependencies(notebook: dict) -> list[tuple[int, set[str]]]:
    """Cells outside the solutions that read a name only a solution defined: they fail in a student copy.

    Returns:
        ``(cell index, names)`` for each such cell, empty when a student copy runs top to bottom.
    """
    bound, only_in_solutions, found = set(), set(), []
    for index, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        stored, read = _names(_parse(_source(cell)))
        if is_solution(cell):
            only_in_solutions |= stored - bound
            continue
        if read & only_in_solutions:
            found.append((index, read & only_in_solutions))
        bound |= stored
        only_in_solutions -= stored
    return found


def remaining_solutions(student: dict, source: dict) -> list[str]:
    """The solution code lines of ``source`` that are still in ``student`` (empty for a good copy).

    A line counts when it is at least 12 characters of code (not a comment) and appears in no
    cell of ``source`` other than a solution, so common lines (``assert solved(...)`` aside) do not.
    """
    others = "\n".join(_source(cell) for cell in source.get("cells", []) if not is_solution(cell))
    text = "\n".join(_source(cell) + json.dumps(cell.get("outputs", [])) for cell in student.get("cells", []))
    lines = {line.strip() for cell in source.get("cells", []) if is_solution(cell)
             for line in _source(cell).splitlines()}
    return sorted(line for line in lines if len(line) >= 12 and not line.startswith("#")
                  and line not in others and line in text)


def write_student_copies(notebooks: list[Path], out: Path) -> list[dict]:
    """Write a student copy of each notebook into ``out``; return one summary row per notebook."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in notebooks:
        source = json.loads(Path(path).read_text())
        student = student_copy(source, Path(path).stem)
        with atomic_file(out / Path(path).name) as tmp:
            tmp.write_text(json.dumps(student, indent=1, ensure_ascii=False) + "\n")
        rows.append({"notebook": Path(path).name,
                     "stubs": sum(STUB_TAG in c.get("metadata", {}).get("tags", []) for c in student["cells"]),
                     "depends_on_solutions": solution_dependencies(source)})
    return rows
