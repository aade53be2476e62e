"""Feature extraction from a frozen backbone, cached on disk, and the linear probes trained on it.

A frozen body gives the same output for the same input every time, so it only
needs to run once: the features go into a safetensors file and the head trains
on them in seconds. The cache is keyed by a fingerprint the library computes itself
(:func:`model_fingerprint`: a hash of the backbone's current weights and settings;
:func:`data_fingerprint`: the number of examples and a hash of their content and labels),
plus the caller's optional text; a file with another key, or a damaged one, is rebuilt,
never trusted.

Two probes: :func:`train_linear_probe` (torch, through :func:`~tlutils.core.train.fit`,
early stopping on a validation split) and :func:`fit_linear_probe` (scikit-learn,
solved to convergence on NumPy arrays).
"""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
)

from tlutils.core.datasets import as_class_labels, content_hash, describe
from tlutils.core.io import try_atomic_write
from tlutils.core.paths import cache_dir
from tlutils.core.runtime import get_device
from tlutils.core.train import call_model, map_batches


def _run_backbone(backbone: Callable, loader, device: torch.device, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(backbone, nn.Module):
        backbone.eval().to(device)
    pairs = map_batches(lambda inputs, targets: (call_model(backbone, inputs).float().flatten(1).cpu(), targets.cpu()),
                        loader, device, progress=progress, desc="extracting features")
    features, labels = torch.cat([features for features, _ in pairs]), torch.cat([labels for _, labels in pairs])
    bad = int((~torch.isfinite(features)).any(dim=1).sum())
    if bad:
        raise FloatingPointError(f"the backbone output NaN or infinite features for {bad} of {len(features)} "
                                 "examples (nothing was cached); check the inputs for NaN values and the backbone's "
                                 "weights (a diverged fine-tuning run?)")
    return features, labels


def _modules_inside(backbone: Callable) -> list[nn.Module]:
    """The modules a plain callable runs: a bound method's owner, a partial's arguments, a closure's cells."""
    if isinstance(backbone, nn.Module):
        return [backbone]
    if isinstance(backbone, functools.partial):
        return _modules_inside(backbone.func) + [a for a in (*backbone.args, *backbone.keywords.values())
                                                 if isinstance(a, nn.Module)]
    owner = getattr(backbone, "__self__", None)
    if isinstance(owner, nn.Module):
        return [owner]
    cells = getattr(backbone, "__closure__", None) or ()
    return [cell.cell_contents for cell in cells if isinstance(getattr(cell, "cell_contents", None), nn.Module)]


def model_fingerprint(backbone: Callable) -> str:
    """A hash of what a backbone computes: its class, its structure and the current values of its weights.

    Hashing every tensor of the ``state_dict`` (parameters and buffers such as BatchNorm
    statistics) costs milliseconds, so a fine-tuned or re-initialised model never gets the
    features of the old one. For a plain function the modules it closes over are hashed;
    a function that uses none gets a warning, since only its name can be hashed.
    """
    modules = _modules_inside(backbone)
    if not modules:
        warnings.warn(f"the feature cache cannot see the weights of {describe(backbone)}: only its name is part of "
                      "the cache key; pass an nn.Module as the backbone, or a fingerprint= naming the model version")
    states = [[(name, tensor) for name, tensor in module.state_dict().items()] for module in modules]
    return content_hash(getattr(backbone, "__qualname__", type(backbone).__qualname__),
                        [describe(module) for module in modules], states)


def _dataset_fingerprint(dataset) -> str | None:
    """The data set's own content hash, or ``None`` when it has no known way to give one."""
    if hasattr(dataset, "fingerprint") and callable(dataset.fingerprint):
        return str(dataset.fingerprint())
    if isinstance(dataset, TensorDataset):
        return content_hash("TensorDataset", list(dataset.tensors))
    if isinstance(dataset, Subset):
        inner = _dataset_fingerprint(dataset.dataset)
        return None if inner is None else content_hash("Subset", np.asarray(dataset.indices), inner)
    if isinstance(dataset, ConcatDataset):
        parts = [_dataset_fingerprint(part) for part in dataset.datasets]
        return None if None in parts else content_hash("ConcatDataset", parts)
    return None


def data_fingerprint(loader) -> tuple[int, str]:
    """The number of examples and a content hash of the inputs and labels a loader yields.

    A DataLoader over a data set of the project (:class:`~tlutils.core.datasets.ArrayImageDataset`,
    :class:`~tlutils.core.datasets.TextDataset`, a ``TensorDataset``, or a ``Subset`` of them)
    is hashed from its arrays, texts and labels and the transform's settings, without running
    any transform: milliseconds. Any other re-iterable loader (a list of batches, a custom
    data set) is iterated once and its batches hashed: this runs its loading and transforms,
    though not the model.

    Returns:
        ``(count, hash)``.

    Raises:
        ValueError: the loader is a one-shot iterator (a generator), which cannot be read twice.
    """
    dataset = getattr(loader, "dataset", None)
    # Only a loader that reads every example once can be hashed from its data set alone; a custom
    # sampler may pick some of them, so its batches are hashed instead.
    plain = isinstance(getattr(loader, "sampler", None), (SequentialSampler, RandomSampler)) \
        and type(getattr(loader, "batch_sampler", None)) is BatchSampler
    known = _dataset_fingerprint(dataset) if dataset is not None and plain else None
    if known is not None:
        count = len(dataset)
        if getattr(loader, "drop_last", False) and loader.batch_size:
            count -= count % loader.batch_size
        return count, content_hash(known, describe(getattr(loader, "collate_fn", None)), count)
    if iter(loader) is loader:
        raise ValueError("a feature cache needs a loader it can read twice (a DataLoader or a list of batches), "
                         "got a one-shot iterator; pass list(batches), or cache_name=None")
    digest, count = [], 0
    for batch in loader:
        digest.append(content_hash(batch))
        labels = batch["labels"] if isinstance(batch, dict) else batch[1]
        count += len(labels)
    return count, content_hash("batches", digest)


_CACHE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]{0,199}")


def feature_cache_path(cache_name: str) -> Path:
    """The file of a feature cache: ``data/cache/features/<cache_name>.safetensors``.

    Raises:
        ValueError: the name could reach outside the cache folder (a path separator, ``..``,
            an absolute path) or is empty.
    """
    if not isinstance(cache_name, str) or not _CACHE_NAME.fullmatch(cache_name) or ".." in cache_name:
        raise ValueError(f"cache_name must be a plain file name of letters, digits and _ . = + - (no path "
                         f"separators, no '..', at most 200 characters), got {cache_name!r}; e.g. "
                         "cache_name='03_fashion_96px', or cache_name=None to disable the cache")
    return cache_dir() / "features" / f"{cache_name}.safetensors"


def _stale_parts(stored: dict, key: dict) -> list[str]:
    """What differs between the key stored in a cache file and the current one, in words."""
    words = {"count": "number of examples", "data": "data or labels", "model": "model weights",
             "fingerprint": "fingerprint text"}
    changed = []
    for name, word in words.items():
        if stored.get(name) != key[name]:
            extra = f" {stored.get(name)} -> {key[name]}" if name == "count" else ""
            changed.append(f"{word}{extra}")
    return changed


def _read_cache(path: Path, key: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Return cached (features, labels), or None when the file is absent, damaged or stale."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            changed = _stale_parts(handle.metadata() or {}, key)
            if changed:
                warnings.warn(f"{path} was made from other data or another model ({', '.join(changed)} changed); "
                              "rebuilding it")
                return None
            features, labels = handle.get_tensor("features"), handle.get_tensor("labels")
    except Exception as error:  # a truncated or foreign file
        warnings.warn(f"{path} is damaged ({error}); rebuilding it")
        return None
    if len(features) != int(key["count"]) or len(labels) != len(features):
        warnings.warn(f"{path} holds {len(features)} rows for {key['count']} examples; rebuilding it")
        return None
    return features, labels


def extract_features(backbone: Callable, loader, cache_name: str | None = None, fingerprint: str = "",
                     device: torch.device | None = None, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a frozen backbone over ``loader`` once and cache the outputs.

    The cache key is computed here, so it cannot be forgotten: the backbone's current weights
    (:func:`model_fingerprint`), the number of examples and a hash of their content and labels
    (:func:`data_fingerprint`), and ``fingerprint``. A cache whose key differs is rebuilt with
    a warning that says what changed.

    Args:
        backbone: Maps a batch of inputs to features (flattened to 2-D).
        loader: Yields ``(inputs, targets)`` or dicts with ``labels``; must not shuffle.
        cache_name: File name under ``data/cache/features/`` (letters, digits, ``_ . = + -``);
            ``None`` disables caching.
        fingerprint: Optional extra text for what the automatic key cannot see, e.g. a setting
            read by the backbone outside its weights.
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.
        progress: Show a tqdm progress bar.

    Returns:
        ``(features, labels)``: float tensor ``N x D`` and label tensor ``N``.

    Raises:
        ValueError: ``cache_name`` is not a plain file name.
    """
    path = feature_cache_path(cache_name) if cache_name is not None else None
    key = None
    if path is not None:
        count, data = data_fingerprint(loader)
        key = {"fingerprint": str(fingerprint), "model": model_fingerprint(backbone), "data": data,
               "count": str(count)}
        cached = _read_cache(path, key)
        if cached is not None:
            return cached
    features, labels = _run_backbone(backbone, loader, device or get_device(), progress)
    if path is not None:
        from safetensors.torch import save_file

        tensors = {"features": features.contiguous(), "labels": labels.contiguous()}
        try_atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=key), what="feature cache")
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

    features, labels = _checked_probe_data(features, labels, num_classes)
    if val is not None:
        val = _checked_probe_data(*val, num_classes, what="val")
    with seeded(seed):  # same numbers for the same seed; the caller's random state is left alone
        probe = LinearProbe(features.mean(dim=0), features.std(dim=0, correction=0), num_classes)
        loader = feature_loader(features, labels, min(batch_size, len(labels)), shuffle=True, seed=seed)
        val_loader = feature_loader(*val, batch_size=256) if val is not None else None
        history = fit(probe, loader, val_loader, epochs=epochs, lr=lr, weight_decay=weight_decay, device=device,
                      progress=False)
    return probe.eval(), history


def _check_finite(features: torch.Tensor | np.ndarray, what: str) -> None:
    """Refuse NaN or infinite features, naming the first bad row."""
    bad = ~np.isfinite(np.asarray(features, dtype=np.float64))
    if bad.any():
        row = int(np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))[0])
        raise ValueError(f"{what} hold {int(bad.sum())} NaN or infinite values (first in row {row}); a probe "
                         "would learn nothing from them: find where they come from (NaN inputs? a diverged "
                         "backbone?) or drop those rows")


def _checked_probe_data(features, labels, num_classes: int, what: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Features as a finite float ``N x D`` tensor and labels as ``N`` class indices below ``num_classes``."""
    features = torch.as_tensor(features)
    if features.dim() != 2 or len(features) != len(labels):
        raise ValueError(f"expected N x D features and N labels, got {tuple(features.shape)} and {len(labels)} labels"
                         f" ({what})")
    _check_finite(features.detach().cpu(), f"the {what} features")
    labels = torch.from_numpy(as_class_labels(labels, f"{what} labels"))
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if len(labels) and int(labels.max()) >= num_classes:
        raise ValueError(f"num_classes={num_classes} but the {what} labels go up to {int(labels.max())}; "
                         f"pass num_classes={int(labels.max()) + 1} (or more)")
    return features.float(), labels


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
    _check_finite(features, "the features")
    _check_finite(reference, "the reference features")
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
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels) & (labels == np.round(labels))):
        raise ValueError(f"labels must be classes (integers or names), got non-integer floats such as "
                         f"{labels[~(labels == np.round(labels))][0]!r}; scikit-learn would treat every distinct "
                         "value as its own class: fix the labels")
    _check_finite(features, "the features")
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
