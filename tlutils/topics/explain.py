"""Why a classifier decides what it decides: Grad-CAM, the pointing game, error analysis."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def grad_cam(model: nn.Module, images: torch.Tensor, target_layer: nn.Module,
             class_index: int | Sequence[int] | None = None) -> torch.Tensor:
    """Grad-CAM heat maps (Selvaraju et al., 2017): where the network looked for a class.

    The activations ``A`` of ``target_layer`` are weighted by the spatial mean of
    the gradient of the class score with respect to them, summed over channels and
    passed through a ReLU; the map is upsampled to the image size and scaled to
    [0, 1] per image.

    Args:
        model: A classifier returning ``N x C`` logits; it is put in eval mode.
        images: ``N x 3 x H x W`` normalised inputs (on the model's device).
        target_layer: The module whose output is explained, usually the last
            convolutional block (``model.features[-1]`` for MobileNetV2); an earlier
            block gives a finer but less semantic map.
        class_index: The class to explain, one per image, or ``None`` for the
            predicted class.

    Returns:
        ``N x H x W`` float tensor in [0, 1], on the CPU.
    """
    captured = {}
    handle = target_layer.register_forward_hook(lambda module, inputs, output: captured.update(a=output))
    try:
        model.eval()
        inputs = images.detach().clone().requires_grad_(True)  # works with a fully frozen model too
        logits = model(inputs)
    finally:
        handle.remove()
    if "a" not in captured:
        raise ValueError("target_layer was not called during the forward pass; pass a module of this model")
    activations = captured["a"]
    if class_index is None:
        chosen = logits.argmax(-1)
    else:
        chosen = torch.as_tensor(class_index, device=logits.device).expand(len(logits))
    score = logits.gather(1, chosen[:, None]).sum()
    gradients, = torch.autograd.grad(score, activations)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = cam.flatten(1).min(1).values[:, None, None]
    high = cam.flatten(1).max(1).values[:, None, None]
    return ((cam - low) / (high - low).clamp_min(1e-8)).detach().cpu()


def pointing_game(heatmaps: torch.Tensor, masks: np.ndarray, tolerance: float = 0.0) -> float:
    """Share of images whose heat-map maximum falls on the object (Zhang et al.'s "pointing game").

    Args:
        heatmaps: ``N x H x W`` maps, e.g. from :func:`grad_cam`.
        masks: ``N x H x W`` boolean masks of where the evidence really is.
        tolerance: A peak up to this many pixels outside the mask still counts
            (coarse maps cannot point more precisely than their cell size).

    Returns:
        The hit rate in [0, 1].
    """
    from scipy.ndimage import distance_transform_edt

    heatmaps, masks = np.asarray(heatmaps), np.asarray(masks).astype(bool)
    if heatmaps.shape != masks.shape:
        raise ValueError(f"heatmaps {heatmaps.shape} and masks {masks.shape} must have the same shape")
    if not masks.reshape(len(masks), -1).any(1).all():
        raise ValueError("every mask needs at least one pixel: pass only images that contain the object")
    targets = np.stack([distance_transform_edt(~mask) <= tolerance for mask in masks])
    peaks = heatmaps.reshape(len(heatmaps), -1).argmax(1)
    return float(targets.reshape(len(targets), -1)[np.arange(len(targets)), peaks].mean())


def pointing_chance(masks: np.ndarray, tolerance: float = 0.0) -> float:
    """The pointing-game score of a heat map whose peak lands at a uniformly random pixel.

    It is the mean share of the image within ``tolerance`` pixels of the mask: the
    baseline that :func:`pointing_game` must beat for a map to mean anything.
    """
    from scipy.ndimage import distance_transform_edt

    masks = np.asarray(masks).astype(bool)
    return float(np.mean([(distance_transform_edt(~mask) <= tolerance).mean() for mask in masks]))


def most_confused_pairs(matrix: np.ndarray, class_names: Sequence[str], k: int = 5) -> list[tuple[str, str, int]]:
    """The ``k`` largest off-diagonal cells of a confusion matrix.

    Args:
        matrix: ``C x C`` counts, rows = true class, columns = prediction.
        class_names: The ``C`` class names.
        k: How many pairs to return.

    Returns:
        ``(true_name, predicted_name, count)`` tuples, largest count first; pairs
        with a count of zero are left out.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(class_names):
        raise ValueError(f"expected a {len(class_names)} x {len(class_names)} matrix, got shape {matrix.shape}")
    off_diagonal = matrix * (1 - np.eye(len(matrix), dtype=matrix.dtype))
    order = np.argsort(-off_diagonal, axis=None, kind="stable")[:k]
    pairs = [(class_names[i], class_names[j], int(off_diagonal[i, j]))
             for i, j in zip(*np.unravel_index(order, matrix.shape))]
    return [pair for pair in pairs if pair[2] > 0]


def confident_mistakes(logits: torch.Tensor, targets: torch.Tensor, k: int = 8) -> list[dict]:
    """The ``k`` wrong predictions the model was most sure of.

    These are the most instructive examples to look at: label noise, classes that
    truly look alike, or a shortcut the model learned.

    Args:
        logits: ``N x C`` scores.
        targets: ``N`` true labels.
        k: How many mistakes to return.

    Returns:
        One dict per mistake, most confident first: ``index``, ``true``,
        ``predicted`` and ``probability`` (of the predicted class).
    """
    if len(logits) != len(targets):
        raise ValueError(f"{len(logits)} rows of logits but {len(targets)} targets")
    probabilities = torch.as_tensor(logits).float().softmax(-1)
    confidence, predicted = probabilities.max(-1)
    targets = torch.as_tensor(targets)
    wrong = torch.nonzero(predicted != targets).flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True)][:k]
    return [{"index": int(i), "true": int(targets[i]), "predicted": int(predicted[i]),
             "probability": float(confidence[i])} for i in wrong]
