"""Adapting a trained model to a new domain without labels: BatchNorm statistics re-estimated (AdaBN)."""

from __future__ import annotations

import torch
from torch import nn

from tlutils.core.runtime import resolve_device
from tlutils.core.train import map_batches


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader, device: torch.device | None = None) -> nn.Module:
    """Re-estimate every BatchNorm layer's running mean and variance on ``loader``.

    During a short training run the weights move faster than the running averages
    (momentum 0.1) can follow, so in eval mode a network trained from scratch can
    normalise with stale statistics and collapse to one class. One pass over
    training data with a cumulative average fixes the statistics without changing
    any weight. Pre-trained networks suffer much less: their weights move little.

    Args:
        model: Any network with BatchNorm layers.
        loader: Yields ``(inputs, targets)`` batches of training data (no augmentation needed).
        device: Where to run; ``None`` picks :func:`~tlutils.core.runtime.get_device`.

    Returns:
        The model, in eval mode.
    """
    device = resolve_device(device)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in norms]
    model.to(device).eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over all batches
        norm.train()
    map_batches(lambda inputs, _: model(inputs), loader, device)  # BatchNorm layers update as they see the batches
    for norm, (momentum, _) in zip(norms, saved):
        norm.momentum = momentum
    return model.eval()
