"""Feature extraction from a frozen backbone, cached on disk.

A frozen body gives the same output for the same input every time, so it only
needs to run once: the features go into a safetensors file and the head trains
on them in seconds. The cache records a fingerprint (which model, which data);
a file with another fingerprint, or a damaged one, is rebuilt, never trusted.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlutils.assets import cache_dir
from tlutils.io import atomic_file
from tlutils.train import unpack_batch
from tlutils.utils import get_device


@torch.no_grad()
def _run_backbone(backbone: Callable, loader, device: torch.device, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from tqdm.auto import tqdm

    if isinstance(backbone, nn.Module):
        backbone.eval().to(device)
    features, labels = [], []
    for batch in tqdm(loader, desc="extracting features", disable=not progress, leave=False):
        inputs, targets = unpack_batch(batch, device)
        out = backbone(**inputs) if isinstance(inputs, dict) else backbone(inputs)
        features.append(out.float().flatten(1).cpu())
        labels.append(targets.cpu())
    if not features:
        raise ValueError("the loader is empty: there is nothing to extract features from")
    return torch.cat(features), torch.cat(labels)


def _read_cache(path: Path, fingerprint: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Return cached (features, labels), or None when the file is absent, damaged or stale."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("fingerprint") != fingerprint:
                warnings.warn(f"{path} was made from other data or another model; rebuilding it")
                return None
            return handle.get_tensor("features"), handle.get_tensor("labels")
    except Exception as error:  # a truncated or foreign file
        warnings.warn(f"{path} is damaged ({error}); rebuilding it")
        return None


def extract_features(backbone: Callable, loader, cache_name: str | None = None, fingerprint: str = "",
                     device: torch.device | None = None, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a frozen backbone over ``loader`` once and cache the outputs.

    Args:
        backbone: Maps a batch of inputs to features (flattened to 2-D).
        loader: Yields ``(inputs, targets)`` or dicts with ``labels``; must not shuffle.
        cache_name: File name under ``data/cache/features/``; ``None`` disables caching.
        fingerprint: Text that identifies model and data (e.g. ``"mobilenet_v2|fashion 96px n=500"``);
            a cache with a different fingerprint is rebuilt.
        device: Defaults to :func:`~tlutils.utils.get_device`.
        progress: Show a tqdm progress bar.

    Returns:
        ``(features, labels)``: float tensor ``N x D`` and label tensor ``N``.
    """
    path = cache_dir() / "features" / f"{cache_name}.safetensors" if cache_name else None
    cached = _read_cache(path, fingerprint) if path else None
    if cached is not None:
        return cached
    features, labels = _run_backbone(backbone, loader, device or get_device(), progress)
    if path is not None:
        from safetensors.torch import save_file

        with atomic_file(path) as tmp:
            save_file({"features": features.contiguous(), "labels": labels.contiguous()}, str(tmp),
                      metadata={"fingerprint": fingerprint})
    return features, labels


def feature_loader(features: torch.Tensor, labels: torch.Tensor, batch_size: int = 64,
                   shuffle: bool = False, seed: int | None = None) -> DataLoader:
    """A DataLoader over cached features, for training a head with :func:`~tlutils.train.fit`."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(TensorDataset(features, labels), batch_size=batch_size, shuffle=shuffle, generator=generator)


class LinearProbe(nn.Module):
    """Standardise features with fixed training statistics, then one linear ``head``.

    Standardising first lets one learning rate suit every feature, whatever its scale.

    Args:
        mean, std: Per-feature statistics of the training features (kept as buffers,
            so they are saved with the model but never trained).
        num_classes: Outputs of the head.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int):
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float().clamp_min(1e-5))
        self.head = nn.Linear(len(mean), num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``N x D`` features -> ``N x num_classes`` logits."""
        return self.head((features - self.mean) / self.std)


def train_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int = 60,
                       lr: float = 1e-2, weight_decay: float = 1e-2, batch_size: int = 32, seed: int = 0,
                       device: torch.device | str | None = None,
                       val: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Train a :class:`LinearProbe` on cached features with :func:`~tlutils.train.fit` (seconds on a CPU).

    :func:`tlutils.anatomy.fit_linear_probe` is the scikit-learn alternative, solved to
    convergence on NumPy arrays.

    Args:
        features: ``N x D`` frozen features, e.g. from :func:`extract_features`.
        labels: ``N`` integer labels.
        num_classes: Outputs of the head.
        epochs, lr, weight_decay: Training of the head (AdamW).
        batch_size: Features per step; ``len(labels)`` or more trains full-batch.
        seed: Seeds the head's initialisation and the shuffling.
        device: Defaults to :func:`~tlutils.utils.get_device`.
        val: Optional ``(features, labels)`` of a validation split: the probe keeps the
            weights of the epoch with the lowest validation loss (a probe on a few hundred
            examples overfits if trained too long).

    Returns:
        ``(probe, history)``; the probe is in eval mode.
    """
    from tlutils.train import fit
    from tlutils.utils import set_seed

    if features.dim() != 2 or len(features) != len(labels):
        raise ValueError(f"expected N x D features and N labels, got {tuple(features.shape)} and {len(labels)} labels")
    set_seed(seed)
    probe = LinearProbe(features.mean(dim=0), features.std(dim=0, correction=0), num_classes)
    loader = feature_loader(features, labels, min(batch_size, len(labels)), shuffle=True, seed=seed)
    val_loader = feature_loader(*val, batch_size=256) if val is not None else None
    history = fit(probe, loader, val_loader, epochs=epochs, lr=lr, weight_decay=weight_decay, device=device,
                  progress=False)
    return probe.eval(), history
