"""Training cost: time and steps to a target accuracy, seconds per epoch, and how cost grows with data.

"Training from scratch takes long" becomes a number here: :func:`time_to_target` reads a run's
validation curve (from :func:`~tlutils.topics.learning_curves.train_with_checkpoints`) and adds
the run's one-time setup, such as extracting frozen features; :func:`epoch_seconds` and
:func:`scaling_exponent` measure how an epoch's cost grows with the training set.

Example:
    >>> table = time_to_target_table(curve, per_class=10, target=0.8)
    >>> summarise_time_to_target(table)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlutils.core.train import fit
from tlutils.topics.learning_curves import Fitted, LearningCurve


def time_to_target(fitted: Fitted, target: float) -> dict:
    """Steps and seconds until a run's validation accuracy first reached ``target``.

    The seconds count the run's one-time setup (feature extraction) plus training up to the
    first checkpoint at or above the target; the resolution is the checkpoint spacing.

    Returns:
        ``{"steps": ..., "seconds": ...}``; both ``inf`` when the target was never reached.
    """
    reached = fitted.curve[fitted.curve["val"] >= target]
    if reached.empty:
        return {"steps": math.inf, "seconds": math.inf}
    first = reached.iloc[0]
    return {"steps": float(first["step"]), "seconds": float(first["seconds"]) + fitted.setup_seconds}


def time_to_target_table(curve: LearningCurve, per_class: int, target: float) -> pd.DataFrame:
    """:func:`time_to_target` of every run at one label budget, plus seconds per step.

    Returns:
        One row per (approach, seed): ``steps``, ``seconds`` (to the target, setup included),
        ``setup_seconds`` and ``seconds_per_step`` (training only).
    """
    if per_class not in curve.fitted:
        raise KeyError(f"no point at {per_class} labels per class; the budgets are {sorted(curve.fitted)}")
    rows = []
    for (approach, seed), fitted in curve.fitted[per_class].items():
        last = fitted.curve.iloc[-1]
        rows.append(
            {
                "approach": approach,
                "seed": seed,
                **time_to_target(fitted, target),
                "setup_seconds": fitted.setup_seconds,
                "seconds_per_step": last["seconds"] / last["step"],
            }
        )
    return pd.DataFrame(rows)


def summarise_time_to_target(table: pd.DataFrame, by: Sequence[str] = ("approach",)) -> pd.DataFrame:
    """Mean +- SE of :func:`time_to_target_table` over the seeds that reached the target, per group.

    Returns:
        A DataFrame indexed by ``by``: ``steps_mean``, ``steps_se``, ``seconds_mean``, ``seconds_se``,
        ``seconds_per_step`` (mean), ``reached`` and ``seeds``; means are ``inf`` when no seed reached it.
    """
    rows = {}
    for key, group in table.groupby(list(by), sort=False):
        done = group[np.isfinite(group["seconds"])]
        row = {"reached": len(done), "seeds": len(group), "seconds_per_step": group["seconds_per_step"].mean()}
        for column in ("steps", "seconds"):
            values = done[column].to_numpy(dtype=float)
            row[f"{column}_mean"] = values.mean() if len(values) else math.inf
            row[f"{column}_se"] = values.std(ddof=1) / math.sqrt(len(values)) if len(values) >= 2 else math.nan
        rows[key if isinstance(key, tuple) else (key,)] = row
    result = pd.DataFrame(list(rows.values()), index=pd.MultiIndex.from_tuples(list(rows), names=list(by)))
    return result.droplevel(list(range(1, len(by)))) if len(by) == 1 else result


def epoch_seconds(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    lr: float = 1e-3,
    collate_fn: Callable | None = None,
    device: torch.device | str | None = None,
) -> float:
    """Wall-clock seconds of one training epoch of ``model`` over ``dataset`` (no validation).

    Returns:
        Seconds, as measured by :func:`~tlutils.core.train.fit`'s history.
    """
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, collate_fn=collate_fn, generator=torch.Generator().manual_seed(0)
    )
    return fit(model, loader, epochs=1, lr=lr, device=device, progress=False, seed=0).seconds


def seconds_per_example(function: Callable[[Any], Any], inputs: Any) -> float:
    """Wall-clock seconds per example of ``function(inputs)`` without gradients (e.g. a frozen body's forward).

    Used to count the one-time feature extraction in a cost even when the features come from a cache.
    """
    if len(inputs) == 0:
        raise ValueError("need at least one example to time")
    with torch.no_grad():
        started = time.perf_counter()
        function(inputs)
        return (time.perf_counter() - started) / len(inputs)


def scaling_exponent(examples: Sequence[float], seconds: Sequence[float]) -> float:
    """The slope of log(seconds) against log(examples): 1 means cost grows in proportion to the data."""
    x, y = np.log(np.asarray(examples, dtype=float)), np.log(np.asarray(seconds, dtype=float))
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("need at least two different set sizes to fit a slope")
    return float(np.polyfit(x, y, 1)[0])


def state_bytes(module: nn.Module, trainable_only: bool = True) -> int:
    """Bytes needed to store a module's (trainable) parameters as float32: the disk cost of a new task."""
    return sum(4 * p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
