"""Crash safety of ``python -m tlutils prepare``: kill -9 at many points of a conversion, then prepare again.

The conversion is a test asset whose builder writes three deterministic files; the
build pauses at named points (``$TLLAB_FAULT_PAUSE``, see
:func:`tlutils.core.io.fault_point`) where the test kills the process with SIGKILL.
Whatever the kill point, the next normal ``prepare`` must give exactly the files of
a clean build and leave no temporary folder behind.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tlutils.core.io import COMPLETE_MARKER, fault_point
from tlutils.core.paths import project_root
from tlutils.core.sources import Asset, Cache

ASSET = "slow_conversion"
CATALOGUE_SPEC = "tests.test_prepare_faults:FAULT_CATALOGUE"
#: Points reached by a first build (no finished folder yet), in order.
FIRST_BUILD_POINTS = ("started", "wrote_weights", "wrote_config", "built", "marked")
#: Points reached only when a finished folder is replaced by a rebuild.
REBUILD_POINTS = ("old_moved", "replaced")


def _deterministic_bytes(label: str, size: int) -> bytes:
    blocks, counter = [], 0
    while sum(map(len, blocks)) < size:
        blocks.append(hashlib.sha256(f"{label}:{counter}".encode()).digest())
        counter += 1
    return b"".join(blocks)[:size]


def _build(out: Path, inputs: dict) -> None:
    """Write weights, config and tokenizer like a conversion, pausing between files for the kills."""
    (out / "model.safetensors").write_bytes(_deterministic_bytes("weights", 300_000))
    fault_point("wrote_weights")
    (out / "config.json").write_text('{"hidden_size": 64, "layers": 3}\n')
    fault_point("wrote_config")
    (out / "tokenizer").mkdir()
    (out / "tokenizer" / "vocab.txt").write_text("".join(f"token{i}\n" for i in range(1000)))


FAULT_CATALOGUE = (
    Asset(
        ASSET,
        "model",
        "a conversion for crash tests",
        (Cache(_build),),
        fix="python -m tlutils prepare slow_conversion",
    ),
)


def _prepare(cache: Path, pause_at: str | None = None, flag: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "TLLAB_CACHE": str(cache), "TLLAB_OFFLINE": "1"}
    env.pop("TLLAB_FAULT_PAUSE", None)
    if pause_at:
        env["TLLAB_FAULT_PAUSE"] = f"{pause_at}={flag}"
    return subprocess.Popen(
        [sys.executable, "-m", "tlutils", "--catalogue", CATALOGUE_SPEC, "prepare", ASSET],
        cwd=project_root(),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _prepare_normally(cache: Path) -> str:
    process = _prepare(cache)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out
    return out


def _kill_at(cache: Path, point: str, tmp_path: Path) -> None:
    """Start prepare, wait until it reaches ``point``, then kill -9 it."""
    flag = tmp_path / f"reached-{point}"
    process = _prepare(cache, point, flag)
    deadline = time.monotonic() + 60
    while not flag.exists():
        if process.poll() is not None:
            pytest.fail(f"prepare ended (code {process.returncode}) before reaching {point}: {process.stdout.read()}")
        assert time.monotonic() < deadline, f"prepare never reached {point}"
        time.sleep(0.02)
    process.kill()  # SIGKILL: no cleanup handler runs
    process.wait(timeout=30)
    process.stdout.close()
    assert process.returncode == -9


def _file_hashes(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _temporaries(cache: Path) -> list[str]:
    return sorted(entry.name for entry in cache.iterdir() if entry.name.endswith(".tmp"))


def test_prepare_killed_at_seven_points_then_rerun_equals_a_clean_build(tmp_path):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    _prepare_normally(clean)
    expected = _file_hashes(clean / ASSET)
    assert set(expected) == {COMPLETE_MARKER, "model.safetensors", "config.json", "tokenizer/vocab.txt"}

    for point in FIRST_BUILD_POINTS:  # each kill leaves a temporary folder and no finished one
        _kill_at(crashed, point, tmp_path)
        assert not (crashed / ASSET).exists(), point
    assert len(_temporaries(crashed)) >= 1  # the killed runs' leftovers are there until the next build

    for point in REBUILD_POINTS:  # a damaged finished folder is being replaced when the kill comes
        if not (crashed / ASSET).exists():
            _prepare_normally(crashed)
        (crashed / ASSET / COMPLETE_MARKER).write_text("ok\n")  # an old marker: must be rebuilt
        _kill_at(crashed, point, tmp_path)
        # moved away: nothing to trust; replaced: the new folder is already complete
        assert (crashed / ASSET).exists() == (point == "replaced"), point

    out = _prepare_normally(crashed)
    assert f"ok       {ASSET}" in out
    assert _file_hashes(crashed / ASSET) == expected
    assert _temporaries(crashed) == [] and sorted(os.listdir(crashed)) == [ASSET]
