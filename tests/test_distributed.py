"""Data-parallel training: shards, batch sizes, and a 2-process torchrun run that matches a 1-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tlutils.core.distributed import Context, mean_over_processes, per_device_batch, sharded_loader

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
SMALL = ["--train-per-class", "16", "--val-per-class", "16", "--epochs", "2", "--global-batch-size", "8",
         "--dropout", "0", "--device", "cpu"]


def test_the_shards_of_one_step_are_the_batch_of_a_single_process():
    data = list(range(20))
    single = [b.tolist() for b in sharded_loader(data, 8, Context(), seed=5)]
    ranks = [[b.tolist() for b in sharded_loader(data, 4, Context(rank=r, world_size=2), seed=5)] for r in (0, 1)]
    for step, batch in enumerate(single):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)   # the same examples in the same step


def test_per_device_batch_splits_evenly_or_says_how_to_fix_it():
    assert per_device_batch(32, Context(world_size=4)) == 8 and per_device_batch(5, Context()) == 5
    with pytest.raises(ValueError, match="cannot be split evenly over 4 processes; use a multiple of 4"):
        per_device_batch(30, Context(world_size=4))
    assert mean_over_processes(0.25, Context()) == 0.25


def test_finetune_rejects_bad_options_with_a_clear_message(tmp_path):
    from tlutils.__main__ import main

    with pytest.raises(SystemExit, match="--lr must be positive"):
        main(["finetune", "--lr", "-1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--global-batch-size must be a positive integer"):
        main(["finetune", "--global-batch-size", "0", "--out", str(tmp_path)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_finetune(launcher: list[str], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, "-m", "tlutils", "finetune", *SMALL, "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is installed with torch; not found next to python")
def test_two_processes_on_gloo_match_one_process_with_the_same_global_batch(tmp_path):
    one = run_finetune([sys.executable], tmp_path / "one")
    two = run_finetune([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(free_port())], tmp_path / "two")
    assert (one["world_size"], two["world_size"], two["per_device_batch"]) == (1, 2, 4)
    assert one["steps"] == two["steps"] == 8
    # DDP averages the two shards' gradients, which is the gradient of the whole batch: with dropout off the
    # runs differ only by float rounding (summation order), so the tolerance is float32's, not a noise band
    assert abs(one["final_train_loss"] - two["final_train_loss"]) < 1e-4
    assert one["val_accuracy"] == two["val_accuracy"]
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    assert "validation accuracy" in (tmp_path / "two" / "README.md").read_text()
