"""pytest plugin: print each notebook's wall time at the end of a run, and record it.

Every run records into data/run_times.json (ignored by git), so ``make test`` leaves
the tree clean. The committed notebooks/run_times.json, which the tour notebook shows
as each notebook's time budget, changes only on purpose:
``pytest notebooks --nbval-lax -p tests.notebook_timing --run-times=notebooks/run_times.json``
(``make run-times``).

Under pytest-xdist (``make test``) it also orders the work for the workers: the notebooks
longest first by their committed times, so no long notebook starts last while the other
workers sit idle; the interview hub after them (it quotes the other notebooks' saved
results); the unit-test files, many and short, at the end where they fill the gaps.
"""

import datetime
import json
import os
import platform
from collections import defaultdict
from pathlib import Path

from tlutils.core.io import atomic_file

_SECONDS: dict[str, float] = defaultdict(float)
_FAILED: set[str] = set()


DEFAULT_RECORD = "data/run_times.json"
COMMITTED_TIMES = "notebooks/run_times.json"
READS_OTHER_NOTEBOOKS = {"13_interview_prep.ipynb"}   # quotes the results the other notebooks save


def pytest_addoption(parser):
    parser.addoption("--run-times", default=DEFAULT_RECORD,
                     help="file that records each notebook's wall time (default: data/run_times.json, not tracked)")


def pytest_collection_modifyitems(config, items):
    """Under xdist, longest notebooks first (see the module docstring); a plain run keeps the numbered order.

    The sort is stable and every worker computes the same order, as xdist requires.
    """
    if not hasattr(config, "workerinput"):
        return
    times_file = Path(config.rootpath) / COMMITTED_TIMES
    seconds = json.loads(times_file.read_text())["seconds"] if times_file.is_file() else {}

    def key(item):
        path = Path(item.nodeid.split("::")[0])
        if path.suffix != ".ipynb":
            return (2, 0.0)
        return (1, 0.0) if path.name in READS_OTHER_NOTEBOOKS else (0, -seconds.get(path.name, 0.0))

    items.sort(key=key)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _SECONDS[path] += report.duration
        if report.failed:
            _FAILED.add(path)


def _record(target: Path) -> None:
    """Merge the passing notebooks' times into ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(target.read_text()) if target.is_file() else {"seconds": {}}
    data["machine"] = f"{os.cpu_count()} CPU cores, {platform.machine()}, torch threads {_torch_threads()}"
    data["measured"] = datetime.date.today().isoformat()
    for path, seconds in _SECONDS.items():
        if path not in _FAILED:
            data["seconds"][Path(path).name] = round(seconds, 1)
    with atomic_file(target) as tmp:  # a killed run never leaves a truncated file behind
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def pytest_terminal_summary(terminalreporter, config):
    if not _SECONDS:
        return
    terminalreporter.write_sep("-", "notebook wall time")
    for path, seconds in sorted(_SECONDS.items()):
        terminalreporter.write_line(f"{seconds:8.1f} s  {path}{'  (failed)' if path in _FAILED else ''}")
    terminalreporter.write_line(f"{sum(_SECONDS.values()):8.1f} s  all notebooks")
    _record(Path(config.rootpath) / config.getoption("run_times"))
