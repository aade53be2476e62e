"""pytest plugin: print each notebook's wall time at the end of a run, and record it.

Every run records into data/run_times.json (ignored by git), so ``make test`` leaves
the tree clean. The committed notebooks/run_times.json, which the tour notebook shows
as each notebook's time budget, changes only on purpose:
``pytest notebooks --nbval-lax -p tests.notebook_timing --run-times=notebooks/run_times.json``
(``make run-times``).
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


def pytest_addoption(parser):
    parser.addoption("--run-times", default=DEFAULT_RECORD,
                     help="file that records each notebook's wall time (default: data/run_times.json, not tracked)")


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
