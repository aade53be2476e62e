"""Feature extraction from a frozen backbone, cached on disk, and the linear probes trained on it.

A frozen body gives the same output for the same input every time, so it only
needs to run once: the features go into a safetensors file and the head trains
on them in seconds. The cache records a fingerprint (which model, which data);
a file with another fingerprint, or a damaged one, is rebuilt, never trusted.

Two probes: :func:`train_linear_probe` (torch, through :func:`~tlutils.core.train.fit`,
early stopping on a validation split) and :func:`fit_linear_probe` (scikit-learn,
solved to convergence on NumPy arrays).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlutils.core.io import atomic_file
from tlutils.core.paths import cache_dir
from tlutils.core.runtime import get_device
from tlutils.core.train import call_model, map_batches


def _run_backbone(backbone: Callable, loader, device: torch.device, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(backbone, nn.Module):
        backbone.eval().to(device)
    pairs = map_batches(lambda inputs, targets: (call_model(backbone, inputs).float().flatten(1).cpu(), targets.cpu()),
                        loader, device, progress=progress, desc="extracting features")
    return torch.cat([features for features, _ in pairs]), torch.cat([labels for _, labels in pairs])


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
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.
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
    """A DataLoader over cached features, for training a head with :func:`~tlutils.core.train.fit`."""
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
    """Train a :class:`LinearProbe` on cached features with :func:`~tlutils.core.train.fit` (seconds on a CPU).

    :func:`tlutils.core.features.fit_linear_probe` is the scikit-learn alternative, solved to
    convergence on NumPy arrays.

    Args:
        features: ``N x D`` frozen features, e.g. from :func:`extract_features`.
        labels: ``N`` integer labels.
        num_classes: Outputs of the head.
        epochs, lr, weight_decay: Training of the head (AdamW).
        batch_size: Features per step; ``len(labels)`` or more trains full-batch.
        seed: Seeds the head's initialisation and the shuffling.
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.
        val: Optional ``(features, labels)`` of a validation split: the probe keeps the
            weights of the epoch with the lowest validation loss (a probe on a few hundred
            examples overfits if trained too long).

    Returns:
        ``(probe, history)``; the probe is in eval mode.
    """
    from tlutils.core.runtime import seeded
    from tlutils.core.train import fit

    if features.dim() != 2 or len(features) != len(labels):
        raise ValueError(f"expected N x D features and N labels, got {tuple(features.shape)} and {len(labels)} labels")
    with seeded(seed):  # same numbers for the same seed; the caller's random state is left alone
        probe = LinearProbe(features.mean(dim=0), features.std(dim=0, correction=0), num_classes)
        loader = feature_loader(features, labels, min(batch_size, len(labels)), shuffle=True, seed=seed)
        val_loader = feature_loader(*val, batch_size=256) if val is not None else None
        history = fit(probe, loader, val_loader, epochs=epochs, lr=lr, weight_decay=weight_decay, device=device,
                      progress=False)
    return probe.eval(), history


def standardize(features: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
    """Subtract the mean and divide by the standard deviation of ``reference`` (default: the features).

    Standardising a target domain with its *own* statistics, while the classifier was
    trained on source features standardised with the source's, is the simplest form of
    feature-statistics alignment: no target labels are needed.

    The scale is the reference's own, however small: the pooled features of a randomly
    initialised network can be of order 1e-9, and a fixed epsilon added to the standard
    deviation would wipe them out. Columns that are constant in the reference are only centred.

    Returns:
        A float64 numpy array of the same shape.
    """
    features = np.asarray(features, dtype=np.float64)
    reference = features if reference is None else np.asarray(reference, dtype=np.float64)
    if features.ndim != 2 or reference.ndim != 2 or features.shape[1] != reference.shape[1]:
        raise ValueError(f"expected N x D features and M x D reference, got {features.shape} and {reference.shape}")
    scale = reference.std(axis=0)
    return (features - reference.mean(axis=0)) / np.where(scale > 0, scale, 1.0)


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, C: float = 0.1, max_iter: int = 1000):
    """A multinomial logistic regression on (standardised) frozen features: a linear head trained to convergence.

    scikit-learn's solver finds the exact optimum of a small convex problem, which suits the
    comparisons of notebook 01 (every probe fully trained, no learning rate to tune). For a
    head trained with :func:`~tlutils.core.train.fit` like any other model, on a GPU or with early
    stopping, use :func:`tlutils.core.features.train_linear_probe`.

    Args:
        features: ``N x D`` features, usually from :func:`standardize`.
        labels: ``N`` integer labels.
        C: Inverse L2 strength; small values regularise more (good for few examples).
        max_iter: Iterations of the L-BFGS solver.

    Returns:
        The fitted scikit-learn ``LogisticRegression`` (``.score(x, y)`` gives accuracy).
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    features, labels = np.asarray(features), np.asarray(labels)
    if len(features) != len(labels) or len(np.unique(labels)) < 2:
        raise ValueError(f"need one label per example and at least two classes, got {len(features)} examples, "
                         f"{len(labels)} labels, {len(np.unique(labels))} classes")
    # A problem this small runs fastest on one thread; with several, the threads mostly wait
    # for each other (tens of times slower on a busy CPU), and the result is identical.
    with threadpool_limits(limits=1):
        return LogisticRegression(C=C, max_iter=max_iter).fit(features, labels)


def probe_accuracy(train_features, train_labels, test_features, test_labels, C: float = 0.1) -> float:
    """Test accuracy of a linear probe; both sets are standardised with the training statistics."""
    train_features, test_features = np.asarray(train_features), np.asarray(test_features)
    probe = fit_linear_probe(standardize(train_features), train_labels, C=C)
    return float(probe.score(standardize(test_features, train_features), np.asarray(test_labels)))
