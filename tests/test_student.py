"""Student copies: no solution left in them, they still run with stubs, and pass nbval with the solutions put back.

The mechanics are checked on a tiny synthetic notebook; one real notebook runs, the fastest one
in notebooks/run_times.json (00_setup_and_tour, about 6 s), once with stubs and once restored.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tlutils.__main__ import main
from tlutils.core.paths import project_root
from tlutils.course.student import (CODE_MARKER, STUB_TAG, calls_a_check, is_solution, remaining_solutions,
                                    restore_solutions, solution_dependencies, student_copy)

ROOT = project_root()
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SMALLEST = "00_setup_and_tour.ipynb"
#: Cells that read a name only a solution defines: the student copy stops there (reported by `make student`).
KNOWN_DEPENDENCIES = {
    "06_vision_detection_segmentation.ipynb": {"ap_30"},  # the headlines cell saves the solution's AP@0.3
}


def _synthetic() -> dict:
    cells = [
        nbformat.v4.new_markdown_cell("# A tiny course notebook\n**Exercise 1.** What is 6 x 7?"),
        nbformat.v4.new_code_cell("import matplotlib\nvalue = 6\nprint('kept output')",
                                  outputs=[nbformat.v4.new_output("stream", text="kept output\n")]),
        nbformat.v4.new_code_cell(
            "from tlutils import check_number, solved\n\nanswer_1 = None  # a number\n\n\n"
            "def check_exercise_1(answer):\n    return check_number(answer, value * 7, hint='multiply')\n\n\n"
            "check_exercise_1(answer_1);",
            outputs=[nbformat.v4.new_output("stream", text="Not answered yet\n")]),
        nbformat.v4.new_code_cell("# Solution\nforty_two = value * 7\nassert solved(check_exercise_1, forty_two)",
                                  metadata={"tags": ["solution"], "jupyter": {"source_hidden": True}}),
        nbformat.v4.new_code_cell("assert value == 6\nprint('the rest runs')",
                                  outputs=[nbformat.v4.new_output("stream", text="the rest runs\n")]),
    ]
    for count, cell in enumerate((c for c in cells if c.cell_type == "code"), start=1):
        cell.execution_count = count  # an executed notebook, as the committed ones are
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return json.loads(nbformat.writes(notebook))


def _text(cell: dict) -> str:
    return "".join(output.get("text", "") if isinstance(output.get("text", ""), str) else "".join(output["text"])
                   for output in cell.get("outputs", []))


def _execute(notebook: dict, folder: Path) -> dict:
    """Run every cell (nbclient); a failing cell raises."""
    import nbclient

    parsed = nbformat.reads(json.dumps(notebook), as_version=4)
    nbclient.NotebookClient(parsed, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}}).execute()
    return json.loads(nbformat.writes(parsed))


def _nbval(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-cell-timeout=600", "--rootdir", str(path.parent), str(path)],
                          capture_output=True, text=True, cwd=path.parent)


def test_a_stub_replaces_each_solution_and_keeps_nbgrader_metadata():
    source = _synthetic()
    student = student_copy(source, "tiny")
    stub = student["cells"][3]
    assert STUB_TAG in stub["metadata"]["tags"] and "solution" not in stub["metadata"]["tags"]
    assert stub["source"].startswith(CODE_MARKER) and "answer_1" in stub["source"]
    assert stub["metadata"]["nbgrader"] == {"grade": False, "grade_id": "tiny-exercise-1", "locked": False,
                                            "schema_version": 3, "solution": True, "task": False}
    assert "jupyter" not in stub["metadata"], "a stub is not collapsed"
    assert stub["id"] == source["cells"][3]["id"]
    assert student["cells"][2]["outputs"] == [] and student["cells"][2]["execution_count"] is None
    assert student["cells"][1]["outputs"] == source["cells"][1]["outputs"], "other outputs stay (the plots)"
    assert remaining_solutions(student, source) == [] and remaining_solutions(source, source)
    assert not any(is_solution(cell) for cell in student["cells"])


def test_putting_the_solutions_back_restores_the_source_code():
    source = _synthetic()
    restored = restore_solutions(student_copy(source), source)
    assert [c["source"] for c in restored["cells"]] == [c["source"] for c in source["cells"]]
    other = _synthetic()
    with pytest.raises(ValueError, match="no solution cell"):
        restore_solutions(student_copy(source), other)  # other cell ids: a copy of another notebook


def test_a_cell_that_reads_a_solution_only_name_is_reported():
    source = _synthetic()
    source["cells"][4]["source"] = "print(forty_two, [value for value in range(2)])"
    assert solution_dependencies(source) == [(4, {"forty_two"})]
    assert solution_dependencies(_synthetic()) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_solution_is_left_in_a_student_copy(path):
    source = json.loads(path.read_text())
    student = student_copy(source, path.stem)
    solutions = sum(is_solution(cell) for cell in source["cells"])
    assert solutions, f"{path.name} has no solution cell"
    assert not any(is_solution(cell) for cell in student["cells"])
    assert sum(STUB_TAG in c["metadata"].get("tags", []) for c in student["cells"]) == solutions
    assert remaining_solutions(student, source) == []
    assert all(not cell["outputs"] for cell in student["cells"] if calls_a_check(cell)), "exercise outputs cleared"
    found = {name for _, names in solution_dependencies(source) for name in names}
    assert found <= KNOWN_DEPENDENCIES.get(path.name, set()), (
        f"a later cell reads {found}, defined only in a solution: the student copy would stop there")


def test_the_command_writes_copies(tmp_path, capsys):
    source = tmp_path / "tiny.ipynb"
    source.write_text(json.dumps(_synthetic()))
    assert main(["student", str(tmp_path / "out"), str(source)]) == 0
    copy = json.loads((tmp_path / "out" / "tiny.ipynb").read_text())
    assert remaining_solutions(copy, _synthetic()) == [] and "1 solution(s) replaced" in capsys.readouterr().out


def test_the_synthetic_copy_runs_with_stubs_and_passes_nbval_restored(tmp_path):
    source = _synthetic()
    ran = _execute(student_copy(source), tmp_path)
    assert "Not answered yet" in _text(ran["cells"][2]) and "the rest runs" in _text(ran["cells"][4])
    restored = tmp_path / "restored.ipynb"
    restored.write_text(json.dumps(restore_solutions(student_copy(source), source)))
    done = _nbval(restored)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def smallest_copy(tmp_path_factory):
    times = json.loads((ROOT / "notebooks" / "run_times.json").read_text())["seconds"]
    assert min(times, key=times.get) == SMALLEST, "pick the fastest notebook of run_times.json for these checks"
    folder = tmp_path_factory.mktemp("student")
    source = json.loads((ROOT / "notebooks" / SMALLEST).read_text())
    return folder, source, student_copy(source, Path(SMALLEST).stem)


def test_a_real_student_copy_runs_and_each_check_says_not_answered(smallest_copy):
    folder, _, student = smallest_copy
    ran = _execute(student, folder)  # raises if any cell fails
    checks = [cell for cell in ran["cells"] if calls_a_check(cell)]
    assert checks and all("Not answered yet" in _text(cell) for cell in checks), [_text(c) for c in checks]


def test_a_real_student_copy_with_its_solutions_back_passes_nbval(smallest_copy):
    folder, source, student = smallest_copy
    path = folder / SMALLEST
    path.write_text(json.dumps(restore_solutions(student, source)))
    done = _nbval(path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


def test_the_cpu_torch_route_installs_the_pinned_set_from_the_cpu_index():
    """What `make setup TORCH=cpu` would run (a dry run: that index is not reachable from every machine)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    pins = [line.split()[0] for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.split("==")[0] in ("torch", "torchvision", "torchaudio")]
    dry = subprocess.run(["make", "-n", "-B", "setup", "TORCH=cpu"], cwd=ROOT, capture_output=True, text=True)
    cpu = [line for line in dry.stdout.splitlines() if "--index-url" in line]
    assert len(cpu) == 1 and "https://download.pytorch.org/whl/cpu" in cpu[0] and "--no-deps" in cpu[0]
    assert sorted(cpu[0].split()[-3:]) == sorted(f"{pin}+cpu" for pin in pins), cpu
    lines = dry.stdout.splitlines()
    assert lines.index(cpu[0]) < next(i for i, line in enumerate(lines) if "-r requirements.txt" in line)
    default = subprocess.run(["make", "-n", "-B", "setup"], cwd=ROOT, capture_output=True, text=True)
    assert "--index-url" not in default.stdout
