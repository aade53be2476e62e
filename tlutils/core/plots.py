"""Every generic plot: histories, confusion matrices, image grids, bars, heat maps, boxes, masks.

Plot functions return the figure and never save files.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from tlutils.core.surgery import trainable_parameters_per_block


def plot_history(history, metrics: Sequence[str] | None = None, title: str | None = None):
    """Loss curves (train and validation) plus one panel per validation metric.

    Args:
        history: A :class:`~tlutils.core.train.History`.
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


def _strongest_channels(maps: torch.Tensor, count: int) -> list[int]:
    """Indices of the channels whose maps vary most over space."""
    return maps.flatten(1).std(dim=1).argsort(descending=True)[:count].tolist()


def plot_activation_maps(activations: dict[str, dict[int, torch.Tensor]], channels: int = 4):
    """Activation maps per model (column groups) and depth (rows); returns the figure.

    For every model and block the ``channels`` maps with the largest spatial variation are shown.

    Args:
        activations: Model title -> output of :func:`block_activations`.
        channels: Maps shown per model and block.
    """
    import matplotlib.pyplot as plt

    titles = list(activations)
    depths = sorted(activations[titles[0]])
    fig, axes = plt.subplots(len(depths), channels * len(titles), squeeze=False,
                             figsize=(0.95 * channels * len(titles), 1.05 * len(depths) + 0.3))
    for row, depth in enumerate(depths):
        for group, title in enumerate(titles):
            maps = activations[title][depth]
            for k, channel in enumerate(_strongest_channels(maps, channels)):
                ax = axes[row, group * channels + k]
                ax.imshow(maps[channel].numpy(), cmap="viridis")
                ax.set_xticks([]), ax.set_yticks([])
                if row == 0 and k == 0:
                    ax.set_title(title, fontsize=9, loc="left")
                if group == 0 and k == 0:
                    ax.set_ylabel(f"block {depth}\n{tuple(maps.shape[1:])}", fontsize=8)
    fig.tight_layout()
    return fig


def plot_projections(points: dict[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str]):
    """Scatter plots of 2-D projections side by side, coloured by class; returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(points), figsize=(4.6 * len(points) + 1.6, 4.2), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (title, xy) in zip(axes[0], points.items()):
        for c, name in enumerate(class_names):
            chosen = np.asarray(labels) == c
            ax.scatter(xy[chosen, 0], xy[chosen, 1], s=7, color=cmap(c % 10), label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2)
    fig.tight_layout()
    return fig


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


def plot_method_comparison(table, metric: str = "test accuracy", title: str = ""):
    """Two bar panels per method: ``metric`` and training seconds; returns the figure."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    colors = plt.cm.tab10(np.arange(len(table)))
    for ax, column in ((left, metric), (right, "seconds")):
        bars = ax.barh(list(table.index)[::-1], table[column].to_numpy()[::-1], color=colors[::-1])
        ax.bar_label(bars, fmt="%.3g", fontsize=8, padding=2)
        ax.set(xlabel=column)
        ax.margins(x=0.18)
    right.set_yticks([])
    low = float(table[metric].min())
    left.set_xlim(max(0.0, low - 0.15), 1.0)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_attention_masks(masks: dict[str, torch.Tensor], tokens: Sequence[str] | None = None):
    """Side-by-side heat maps of attention masks (rows attend to columns); returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(masks), figsize=(3.3 * len(masks), 3.4), squeeze=False)
    for ax, (title, mask) in zip(axes[0], masks.items()):
        ax.imshow(mask.float().numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.set(xlabel="attends to (key)", ylabel="token (query)")
        if tokens is not None:
            ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
            ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    fig.tight_layout()
    return fig


def show_heatmaps(images: Sequence[np.ndarray], heatmaps: torch.Tensor, titles: Sequence[str] | None = None,
                  alpha: float = 0.45, size: float = 1.9):
    """Each image above its heat-map overlay; returns the figure.

    Args:
        images: ``uint8`` images at the heat maps' size (``H x W`` or ``H x W x 3``).
        heatmaps: ``N x H x W`` maps in [0, 1].
        titles: One title per image.
        alpha: Opacity of the heat map over the image.
        size: Inches per panel.
    """
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(size * n, size * 2.1), squeeze=False)
    for i, (image, heatmap) in enumerate(zip(images, np.asarray(heatmaps))):
        image = np.asarray(image)
        cmap = "gray" if image.ndim == 2 else None
        axes[0, i].imshow(image, cmap=cmap)
        axes[1, i].imshow(image, cmap=cmap)
        axes[1, i].imshow(heatmap, cmap="jet", alpha=alpha, vmin=0, vmax=1)
        if titles is not None:
            axes[0, i].set_title(titles[i], fontsize=8)
        axes[0, i].axis("off")
        axes[1, i].axis("off")
    axes[1, 0].set_title("Grad-CAM", fontsize=8, loc="left")
    fig.tight_layout()
    return fig


def show_detections(images: Sequence[np.ndarray], predictions: Sequence[dict], true_boxes: Sequence[np.ndarray],
                    score_threshold: float = 0.5, titles: Sequence[str] | None = None, size: float = 2.6,
                    class_names: Sequence[str] | None = None):
    """Images with true boxes (white, dashed) and predicted boxes; returns the figure.

    Predicted boxes scoring at least ``score_threshold`` are drawn in red when
    confident, shading to yellow towards the threshold. With ``class_names``, each box
    is labelled with its class (from the prediction's ``labels``) and score.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(1, len(images), figsize=(size * len(images), size * 1.08), squeeze=False)
    for i, (ax, image, pred, truth) in enumerate(zip(axes[0], images, predictions, true_boxes)):
        ax.imshow(image)
        for x0, y0, x1, y1 in np.asarray(truth).reshape(-1, 4):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", ls="--", lw=1))
        keep = np.asarray(pred["scores"]) >= score_threshold
        labels = np.asarray(pred.get("labels", np.zeros(len(keep), dtype=int)))[keep]
        for (x0, y0, x1, y1), score, label in zip(np.asarray(pred["boxes"])[keep], np.asarray(pred["scores"])[keep],
                                                  labels):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=plt.cm.autumn(1 - score), lw=1.5))
            if class_names is not None:
                ax.text(x0, y0, f"{class_names[int(label)]} {score:.2f}", fontsize=7, va="bottom",
                        color="black", bbox=dict(fc=plt.cm.autumn(1 - score), ec="none", pad=1))
        ax.set_title(titles[i] if titles is not None else f"{int(keep.sum())} boxes, {len(truth)} true", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def show_masks(images: Sequence[np.ndarray], true_masks: Sequence[np.ndarray],
               predicted: dict[str, Sequence[np.ndarray]], size: float = 1.7):
    """Images, true masks and each model's predicted masks in rows; returns the figure.

    Args:
        images: The scenes.
        true_masks: Their true masks.
        predicted: Row label -> predicted masks, e.g. ``{"pre-trained": m1, "random": m2}``.
        size: Inches per panel.
    """
    import matplotlib.pyplot as plt

    rows = [("image", images), ("true mask", true_masks), *predicted.items()]
    n = len(images)
    fig, axes = plt.subplots(len(rows), n, figsize=(size * n, size * len(rows)), squeeze=False)
    for r, (label, row) in enumerate(rows):
        for c in range(n):
            axes[r, c].imshow(np.asarray(row[c]), cmap=None if r == 0 else "gray", vmin=0, vmax=None if r == 0 else 1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=9)
    fig.tight_layout()
    return fig
