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
