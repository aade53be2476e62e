"""Plots that return a matplotlib figure and never save files as a side effect."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


def plot_history(history, metrics: Sequence[str] | None = None, title: str | None = None):
    """Loss curves (train and validation) plus one panel per validation metric.

    Args:
        history: A :class:`~tlutils.train.History`.
        metrics: Metric names without the ``val_`` prefix; default: all recorded.
    """
    keys = set().union(*(row.keys() for row in history.epochs)) if history.epochs else set()
    metrics = metrics or sorted(k[4:] for k in keys if k.startswith("val_") and k != "val_loss")
    fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(4.2 * (1 + len(metrics)), 3.2), squeeze=False)
    epochs = history["epoch"]
    axes[0, 0].plot(epochs, history["train_loss"], "o-", label="train")
    if "val_loss" in keys:
        axes[0, 0].plot(epochs, history["val_loss"], "o-", label="validation")
    axes[0, 0].set(title="loss", xlabel="epoch")
    axes[0, 0].legend()
    for ax, name in zip(axes[0, 1:], metrics):
        ax.plot(epochs, history[f"val_{name}"], "o-", color="tab:green")
        ax.set(title=f"validation {name}", xlabel="epoch")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], normalize: bool = True, title: str = ""):
    """Heat map of a confusion matrix, rows = true class, columns = prediction."""
    matrix = np.asarray(matrix, dtype=float)
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(0.55 * len(class_names) + 2.5, 0.55 * len(class_names) + 2))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.2f}" if normalize else int(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def show_images(images: Sequence, titles: Sequence[str] | None = None, ncols: int = 8, size: float = 1.6):
    """A grid of images (H x W or H x W x 3 arrays) with optional titles."""
    nrows = int(np.ceil(len(images) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * 1.15), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, image in enumerate(images):
        ax = axes.ravel()[i]
        ax.imshow(np.asarray(image), cmap="gray" if np.asarray(image).ndim == 2 else None)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def bar_chart(labels: Sequence[str], values: Sequence[float], value_label: str, title: str = ""):
    """Labelled horizontal bars, first label on top, each annotated with its value.

    Horizontal bars keep long method names readable without rotating them.
    """
    if len(labels) != len(values) or not labels:
        raise ValueError(f"need one value per label, got {len(labels)} labels and {len(values)} values")
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2))
    bars = ax.barh(range(len(labels)), values, color="tab:blue")
    ax.bar_label(bars, fmt="%.3g", fontsize=8, padding=2)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15 * max(values) if max(values) > 0 else 1)  # room for the value labels
    ax.set(xlabel=value_label, title=title)
    fig.tight_layout()
    return fig
