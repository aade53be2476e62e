"""Overfitting during fine-tuning: where the validation loss turns, and mixup as a step function.

* :func:`turning_epoch` finds the epoch after which more training only hurts on validation.
* :func:`mixup_step` trains on convex mixtures of pairs of examples and of their labels (Zhang et al.,
  2018); on cached intermediate features it is *manifold* mixup (Verma et al., 2019).
* :class:`FeatureAugmentation` draws, per example and step, one of several cached views (the
  original image and its augmented copies), so augmentation works on a feature cache too.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from tlutils.core.train import Loss, Step, call_model, unpack_batch


def turning_epoch(val_losses) -> int:
    """The 1-based epoch with the lowest validation loss: where the curve turns (the last one if it never does)."""
    values = [float(v) for v in val_losses]
    if not values or any(v != v for v in values):
        raise ValueError("val_losses must be a non-empty sequence of numbers (train with a val_loader)")
    return min(range(len(values)), key=lambda i: values[i]) + 1


def mixup_step(alpha: float = 0.4, loss_fn: nn.Module | None = None) -> Step:
    """Cross-entropy on mixed pairs: ``lam * x_i + (1 - lam) * x_j`` with the labels mixed by the same ``lam``.

    ``lam`` is drawn from ``Beta(alpha, alpha)`` once per batch; ``j`` is a random permutation of the batch.

    Args:
        alpha: Beta parameter (> 0); small values mix little.
        loss_fn: Per-label loss, cross-entropy by default.

    Returns:
        A step for :func:`~tlutils.core.train.fit`; logs ``lam``.
    """
    if not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    beta = torch.distributions.Beta(float(alpha), float(alpha))

    def step(model: nn.Module, batch, device: torch.device) -> Loss:
        inputs, targets = unpack_batch(batch, device)
        if isinstance(inputs, dict):
            raise ValueError("mixup_step mixes tensors; it cannot mix dict (token) inputs")
        lam = float(beta.sample())
        order = torch.randperm(len(targets), device=device)
        logits = call_model(model, lam * inputs + (1 - lam) * inputs[order])
        loss = lam * loss_fn(logits, targets) + (1 - lam) * loss_fn(logits, targets[order])
        return Loss(loss, {"lam": lam}, len(targets))

    return step


class FeatureAugmentation(Dataset):
    """Cached features of several views of each example; each access draws one view at random.

    Args:
        views: ``V x N x ...`` tensor: view 0 the original, the others augmented copies of the same examples.
        labels: ``N`` labels.
    """

    def __init__(self, views: torch.Tensor, labels: torch.Tensor):
        if views.dim() < 2 or views.shape[1] != len(labels):
            raise ValueError(f"views must be V x N x ... with N = {len(labels)} labels, got {tuple(views.shape)}")
        self.views, self.labels = views, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        view = int(torch.randint(len(self.views), ()))  # the global generator: seeded runs repeat
        return self.views[view, index], self.labels[index]
