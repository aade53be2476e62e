"""Fine-tuning strategies, one function each, all returning a :class:`StrategyRun`.

From the cheapest to the most flexible:

* :func:`feature_extraction`: freeze the body, cache its features once, train the head.
* :func:`partial_fine_tuning`: train the head and the last ``k`` body blocks.
* :func:`full_fine_tuning`: train everything with one learning rate.
* :func:`layerwise_lr_fine_tuning`: train everything, with a learning rate per block
  (discriminative rates via :func:`grouped_block_lrs`, or layer-wise decay).
* :func:`gradual_unfreezing`: unfreeze blocks from the top down, one stage at a time.
* :func:`linear_probe_then_fine_tune`: LP-FT, a trained head first, then full fine-tuning.

Every function changes the model in place (its head must already fit the target
classes, see :func:`~tlutils.surgery.replace_head`) and leaves it ready for
:func:`~tlutils.train.evaluate`. :func:`strategy_summary` turns a run into a table row.

Example:
    >>> model = replace_head(load_mobilenet_v2(), 10)
    >>> run = partial_fine_tuning(model, train_loader, val_loader, blocks=3, epochs=3, lr=1e-3, device=device)
    >>> strategy_summary(run, model, val_loader, test_loader, device)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import RandomSampler

from tlutils.features import extract_features, feature_loader
from tlutils.surgery import (freeze, freeze_body_except_last, head_name, layerwise_param_groups, model_blocks,
                             param_group_table, pooled_body, trainable_parameter_count, unfreeze)
from tlutils.train import History, evaluate, fit


@dataclass
class StrategyRun:
    """The record of one strategy: its training stages, size and cost.

    Attributes:
        name: Short name of the strategy, used as the table row label.
        stages: ``(stage name, History)`` pairs in the order they ran.
        trainable_params: The most parameters trained at the same time.
        seconds: Wall time, including feature extraction when the cache was cold.
        details: Extra text worth printing (e.g. the learning rate of every parameter group).
    """

    name: str
    stages: list[tuple[str, History]] = field(default_factory=list)
    trainable_params: int = 0
    seconds: float = 0.0
    details: str = ""

    @property
    def history(self) -> History:
        """All stages as one :class:`~tlutils.train.History`, epochs numbered on, with a ``stage`` column."""
        merged = History()
        for stage, history in self.stages:
            for row in history.epochs:
                merged.epochs.append({**row, "epoch": len(merged.epochs) + 1, "stage": stage})
        return merged


def _check_positive(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _check_not_shuffled(loader, what: str) -> None:
    if isinstance(getattr(loader, "sampler", None), RandomSampler):
        raise ValueError(f"{what} shuffles, but cached features must line up with a fixed order: "
                         "build it with shuffle=False (the features are shuffled for training instead)")


def _fit_stage(model: nn.Module, train_loader, val_loader, *, epochs: int, lr: float, device: torch.device,
               seed: int, optimizer=None, scheduler=None, progress: bool = False) -> History:
    _check_positive("epochs", epochs)
    _check_positive("lr", lr)
    return fit(model, train_loader, val_loader, epochs=epochs, lr=lr, optimizer=optimizer, scheduler=scheduler,
               device=device, seed=seed, progress=progress)


def feature_extraction(model: nn.Module, train_loader, val_loader, *, epochs: int, lr: float,
                       device: torch.device, cache_name: str | None = None, fingerprint: str = "",
                       batch_size: int = 64, seed: int = 0, progress: bool = False) -> StrategyRun:
    """Freeze the body, compute its features once (cached), train only the head on them.

    Args:
        model: A CNN with ``features`` and a head already sized for the target classes.
        train_loader: Training images in a fixed order (``shuffle=False``).
        val_loader: Validation images in a fixed order.
        epochs: Epochs of head training on the cached features.
        lr: AdamW learning rate of the head.
        device: Where to run.
        cache_name: Prefix of the feature cache files (``<name>_train``, ``<name>_val``);
            ``None`` disables caching.
        fingerprint: Identifies model and data, so a stale cache is rebuilt.
        batch_size: Batch size of head training.
        seed: Seeds the feature shuffling and the training.
        progress: Show progress bars.

    Returns:
        The :class:`StrategyRun`; the model's head is trained, its body unchanged.
    """
    _check_not_shuffled(train_loader, "train_loader")
    _check_not_shuffled(val_loader, "val_loader")
    start = time.perf_counter()
    head = getattr(model, head_name(model))
    freeze(model)
    unfreeze(model, [head_name(model)])
    body = pooled_body(model)
    splits = {}
    for split, loader in (("train", train_loader), ("val", val_loader)):
        name = f"{cache_name}_{split}" if cache_name else None
        splits[split] = extract_features(body, loader, name, f"{fingerprint}|{split}", device, progress)
    history = _fit_stage(head, feature_loader(*splits["train"], batch_size, shuffle=True, seed=seed),
                         feature_loader(*splits["val"], batch_size), epochs=epochs, lr=lr, device=device,
                         seed=seed, progress=progress)
    return StrategyRun("feature extraction", [("head on cached features", history)],
                       trainable_parameter_count(model), time.perf_counter() - start)


def partial_fine_tuning(model: nn.Module, train_loader, val_loader, *, blocks: int, epochs: int, lr: float,
                        device: torch.device, seed: int = 0, scheduler=None, progress: bool = False) -> StrategyRun:
    """Train the head and the last ``blocks`` body blocks; everything below stays frozen.

    Frozen BatchNorm layers keep their pre-trained statistics (``fit`` uses
    :func:`~tlutils.surgery.set_train_mode`).

    Args:
        model: A pre-trained network with a target-sized head.
        blocks: How many body blocks, counted from the top, to train (0 = head only).
        epochs, lr, device, seed, scheduler, progress: As for :func:`~tlutils.train.fit`.
    """
    start = time.perf_counter()
    freeze_body_except_last(model, blocks)
    history = _fit_stage(model, train_loader, val_loader, epochs=epochs, lr=lr, device=device, seed=seed,
                         scheduler=scheduler, progress=progress)
    return StrategyRun(f"partial (last {blocks} blocks)", [(f"last {blocks} blocks", history)],
                       trainable_parameter_count(model), time.perf_counter() - start)


def full_fine_tuning(model: nn.Module, train_loader, val_loader, *, epochs: int, lr: float,
                     device: torch.device, seed: int = 0, scheduler=None, progress: bool = False) -> StrategyRun:
    """Train every parameter with one learning rate (AdamW)."""
    start = time.perf_counter()
    unfreeze(model)
    history = _fit_stage(model, train_loader, val_loader, epochs=epochs, lr=lr, device=device, seed=seed,
                         scheduler=scheduler, progress=progress)
    return StrategyRun("full fine-tuning", [("all layers", history)], trainable_parameter_count(model),
                       time.perf_counter() - start)


def grouped_block_lrs(num_blocks: int, group_lrs: Sequence[float]) -> list[float]:
    """Discriminative learning rates: split the blocks into contiguous groups, one rate each.

    Args:
        num_blocks: Number of body blocks (``len(model_blocks(model))``).
        group_lrs: One rate per group, input side first, e.g. ``[1e-5, 1e-4, 1e-3]``
            for bottom, middle and top.

    Returns:
        One rate per block, for ``layerwise_param_groups(..., block_lrs=...)``.

    Example:
        >>> grouped_block_lrs(5, [0.1, 1.0])
        [0.1, 0.1, 0.1, 1.0, 1.0]
    """
    if not group_lrs or len(group_lrs) > num_blocks:
        raise ValueError(f"need between 1 and {num_blocks} group rates (one per group), got {len(group_lrs)}")
    for lr in group_lrs:
        _check_positive("every group rate", lr)
    sizes = [len(part) for part in np.array_split(np.arange(num_blocks), len(group_lrs))]
    return [float(lr) for lr, size in zip(group_lrs, sizes) for _ in range(size)]


def layerwise_lr_fine_tuning(model: nn.Module, train_loader, val_loader, *, epochs: int, head_lr: float,
                             device: torch.device, decay: float = 1.0, block_lrs: Sequence[float] | None = None,
                             name: str | None = None, seed: int = 0, scheduler=None,
                             progress: bool = False) -> StrategyRun:
    """Train everything with a learning rate per block: low near the input, high at the head.

    Either layer-wise decay (``decay`` < 1: each block down from the head gets the
    rate above times ``decay``) or explicit discriminative rates (``block_lrs``, one
    per block, e.g. from :func:`grouped_block_lrs`).

    Args:
        model: A pre-trained network with a target-sized head.
        epochs: Training epochs.
        head_lr: Learning rate of the head.
        device: Where to train.
        decay: Layer-wise decay factor in (0, 1].
        block_lrs: Explicit per-block rates (input side first); overrides ``decay``.
        name: Row label; default says which variant ran.
        seed, scheduler, progress: As for :func:`~tlutils.train.fit`.

    Returns:
        The run; ``details`` holds the table of parameter groups and their rates.
    """
    _check_positive("head_lr", head_lr)
    start = time.perf_counter()
    unfreeze(model)
    groups = layerwise_param_groups(model, head_lr=head_lr, decay=decay, block_lrs=block_lrs)
    optimizer = torch.optim.AdamW(groups)
    history = _fit_stage(model, train_loader, val_loader, epochs=epochs, lr=head_lr, device=device, seed=seed,
                         optimizer=optimizer, scheduler=scheduler, progress=progress)
    label = name or ("discriminative rates" if block_lrs is not None else f"layer-wise decay {decay:g}")
    return StrategyRun(label, [("all layers, per-block rates", history)], trainable_parameter_count(model),
                       time.perf_counter() - start, param_group_table(groups))


def gradual_unfreezing(model: nn.Module, train_loader, val_loader, *, schedule: Sequence[int],
                       epochs_per_stage: int, lr: float | Sequence[float], device: torch.device,
                       seed: int = 0, progress: bool = False) -> StrategyRun:
    """Unfreeze from the top down: stage ``i`` trains the head and the last ``schedule[i]`` blocks.

    Each stage starts a fresh optimizer over the parameters trainable in that stage
    (ULMFiT's recipe, without its triangular schedule).

    Args:
        model: A pre-trained network with a target-sized head.
        schedule: Non-decreasing numbers of trainable blocks, e.g. ``[0, 3, 8, 19]``.
        epochs_per_stage: Epochs in every stage.
        lr: One learning rate, or one per stage (often lower as more blocks thaw).
        device, seed, progress: As for :func:`~tlutils.train.fit`.
    """
    lrs = [lr] * len(schedule) if isinstance(lr, (int, float)) else list(lr)
    if not schedule or len(lrs) != len(schedule):
        raise ValueError(f"schedule needs at least one stage and one learning rate per stage, "
                         f"got {len(schedule)} stages and {len(lrs)} rates")
    if any(later < earlier for earlier, later in zip(schedule, schedule[1:])):
        raise ValueError(f"schedule must not decrease (blocks are unfrozen, never frozen again): {list(schedule)}")
    start, run = time.perf_counter(), StrategyRun("gradual unfreezing")
    for stage, (blocks, stage_lr) in enumerate(zip(schedule, lrs)):
        freeze_body_except_last(model, blocks)
        run.trainable_params = max(run.trainable_params, trainable_parameter_count(model))
        history = _fit_stage(model, train_loader, val_loader, epochs=epochs_per_stage, lr=stage_lr,
                             device=device, seed=seed + stage, progress=progress)
        run.stages.append((f"last {blocks} blocks", history))
    run.seconds = time.perf_counter() - start
    return run


def linear_probe_then_fine_tune(model: nn.Module, probe_train_loader, probe_val_loader, train_loader, val_loader,
                                *, probe_epochs: int, probe_lr: float, epochs: int, lr: float,
                                device: torch.device, cache_name: str | None = None, fingerprint: str = "",
                                seed: int = 0, progress: bool = False) -> StrategyRun:
    """LP-FT (Kumar et al., 2022): train the head on frozen features, then fine-tune everything.

    A randomly initialised head sends large, noisy gradients into the body at the
    start of full fine-tuning and distorts the pre-trained features; starting from a
    trained head avoids that.

    Args:
        model: A CNN with ``features`` and a target-sized head.
        probe_train_loader, probe_val_loader: Fixed-order loaders for the cached features.
        train_loader, val_loader: Loaders for fine-tuning (the training one may shuffle).
        probe_epochs, probe_lr: Linear-probe stage (see :func:`feature_extraction`).
        epochs, lr: Full fine-tuning stage (usually a lower rate than plain fine-tuning).
        device, cache_name, fingerprint, seed, progress: As for :func:`feature_extraction`.
    """
    start = time.perf_counter()
    probe = feature_extraction(model, probe_train_loader, probe_val_loader, epochs=probe_epochs, lr=probe_lr,
                               device=device, cache_name=cache_name, fingerprint=fingerprint, seed=seed,
                               progress=progress)
    tune = full_fine_tuning(model, train_loader, val_loader, epochs=epochs, lr=lr, device=device, seed=seed,
                            progress=progress)
    return StrategyRun("LP-FT", probe.stages + [("then all layers", tune.stages[0][1])],
                       max(probe.trainable_params, tune.trainable_params), time.perf_counter() - start)


def strategy_summary(run: StrategyRun, model: nn.Module, val_loader, test_loader, device: torch.device) -> dict:
    """One table row: strategy, trainable parameters, seconds, validation and test accuracy.

    Both accuracies are measured on images through the whole model, the same way for
    every strategy.
    """
    return {"strategy": run.name, "trainable_params": run.trainable_params, "seconds": run.seconds,
            "val_accuracy": evaluate(model, val_loader, device)["accuracy"],
            "test_accuracy": evaluate(model, test_loader, device)["accuracy"]}


def trainable_parameters_per_block(model: nn.Module) -> list[dict]:
    """For every body block and the head: ``block``, ``params`` and ``trainable`` counts."""
    named = model_blocks(model) + [(head_name(model), getattr(model, head_name(model)))]
    rows = []
    for name, module in named:
        params = list(module.parameters())
        if params:
            rows.append({"block": name, "params": sum(p.numel() for p in params),
                         "trainable": sum(p.numel() for p in params if p.requires_grad)})
    return rows


def plot_trainable_blocks(model: nn.Module, title: str = "", ax=None):
    """Bars of parameters per block (log scale), trainable ones coloured, frozen ones grey.

    Args:
        model: A network with body blocks and a head.
        title: Axes title.
        ax: Draw into these axes; default a new figure.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    rows = trainable_parameters_per_block(model)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(5.0, 0.36 * len(rows) + 1.5), 3.0))
    colours = ["tab:orange" if row["trainable"] else "lightgrey" for row in rows]
    ax.bar(range(len(rows)), [row["params"] for row in rows], color=colours)
    ax.set_xticks(range(len(rows)), [row["block"].split(".")[-1] for row in rows], fontsize=7)
    ax.set(yscale="log", xlabel="block (input side first, head last)", ylabel="parameters",
           title=title or "trainable (orange) and frozen (grey) blocks")
    ax.figure.tight_layout()
    return ax.figure


def accuracy_standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` examples: ``sqrt(p (1 - p) / n)``."""
    if n < 1 or not 0 <= accuracy <= 1:
        raise ValueError(f"need n >= 1 and an accuracy in [0, 1], got n={n}, accuracy={accuracy}")
    return float(np.sqrt(accuracy * (1 - accuracy) / n))


def _short_number(value: float) -> str:
    """1234567 -> '1.23M', 12810 -> '12.8k', 0.8123 -> '0.812', 45.04 -> '45'."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:.2f}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.3g}"


def plot_strategy_table(table, test_size: int, title: str = ""):
    """Three panels per strategy: test accuracy (with one standard error), wall time, trainable parameters.

    Args:
        table: A pandas DataFrame of :func:`strategy_summary` rows.
        test_size: Number of test examples (for the error bars).
        title: Figure title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    names = list(table["strategy"])
    errors = [accuracy_standard_error(a, test_size) for a in table["test_accuracy"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = ((table["test_accuracy"], "test accuracy", "linear"), (table["seconds"], "wall time (s)", "linear"),
              (table["trainable_params"], "trainable parameters", "log"))
    for ax, (values, label, scale) in zip(axes, panels):
        bars = ax.bar(names, values, yerr=errors if label == "test accuracy" else None, capsize=3,
                      color="tab:blue" if label == "test accuracy" else "tab:grey")
        ax.bar_label(bars, labels=[_short_number(value) for value in values], fontsize=7, padding=2)
        ax.set(ylabel=label, yscale=scale)
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    low = min(table["test_accuracy"]) - 3 * max(errors)
    axes[0].set_ylim(max(0.0, low), min(1.0, max(table["test_accuracy"]) + 3 * max(errors)))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
