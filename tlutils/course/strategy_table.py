"""The strategy table of notebook 04: one row per strategy, and its plot."""

from __future__ import annotations

import torch
from torch import nn

from tlutils.core.metrics import accuracy_standard_error
from tlutils.core.train import evaluate
from tlutils.topics.strategies import StrategyRun


def strategy_summary(run: StrategyRun, model: nn.Module, val_loader, test_loader, device: torch.device) -> dict:
    """One table row: strategy, trainable parameters, seconds, validation and test accuracy.

    Both accuracies are measured on images through the whole model, the same way for
    every strategy.
    """
    return {"strategy": run.name, "trainable_params": run.trainable_params, "seconds": run.seconds,
            "val_accuracy": evaluate(model, val_loader, device)["accuracy"],
            "test_accuracy": evaluate(model, test_loader, device)["accuracy"]}


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
