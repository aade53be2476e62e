"""pytest plugin: print each notebook's wall time at the end of a run, and record it.

The times go into notebooks/run_times.json (merged with earlier entries), which
the tour notebook shows as the time budget of each notebook.
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


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _SECONDS[path] += report.duration
        if report.failed:
            _FAILED.add(path)


def _record(root: Path) -> None:
    """Merge the passing notebooks' times into notebooks/run_times.json."""
    target = root / "notebooks" / "run_times.json"
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
    _record(Path(config.rootpath))
