"""Plots of notebook 03: the lambda sweep of the joint objective."""

from __future__ import annotations

from typing import Sequence


def plot_lambda_sweep(lambdas: Sequence[float], source_accuracy: Sequence[float],
                      target_accuracy: Sequence[float], highlight: float | None = None, title: str = ""):
    """Source and target accuracy against the target weight ``lambda`` (symmetric-log x axis).

    Args:
        lambdas: The swept values (0 allowed).
        source_accuracy, target_accuracy: One accuracy per lambda.
        highlight: A lambda to mark with a vertical line (e.g. the slider's value).
        title: Figure title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if not len(lambdas) == len(source_accuracy) == len(target_accuracy):
        raise ValueError("lambdas, source_accuracy and target_accuracy need one value each per run")
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.plot(lambdas, source_accuracy, "o-", label="source task (Fashion-MNIST)")
    ax.plot(lambdas, target_accuracy, "s-", label="target task (MNIST)")
    if highlight is not None:
        ax.axvline(highlight, color="grey", linestyle="--", label=f"lambda = {highlight:g}")
    positive = [lam for lam in lambdas if lam > 0] or [1.0]
    ax.set_xscale("symlog", linthresh=min(positive))
    ax.set(xlabel="lambda (weight of the target loss)", ylabel="validation accuracy", ylim=(0, 1),
           title=title or "L_total = L_source + lambda * L_target")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig
