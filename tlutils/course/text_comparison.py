"""The four text classifiers of notebook 07 on one split, tabulated."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from tlutils.core.datasets import text_loader
from tlutils.topics.text import (
    finetune_text_classifier,
    fit_tfidf_logreg,
    pooled_features,
)


def _accuracy(model: nn.Module, loader, device: torch.device | None) -> float:
    from tlutils.core.train import evaluate

    return float(evaluate(model, loader, device)["accuracy"])


def compare_text_classifiers(encoder_name: str, train: tuple[Sequence[str], Sequence[int]],
                             val: tuple[Sequence[str], Sequence[int]], test: tuple[Sequence[str], Sequence[int]],
                             num_classes: int, max_length: int = 64, batch_size: int = 16, epochs: int = 2,
                             lr: float = 1e-4, head_lr: float = 1e-3, llrd_decay: float = 0.3,
                             probe_epochs: int = 100, probe_lr: float = 1e-3, seed: int = 0,
                             cache_prefix: str | None = None, device: torch.device | None = None,
                             progress: bool = False):
    """Run the four classifiers of notebook 07 on one split and tabulate them.

    1. TF-IDF + logistic regression (no pre-training);
    2. frozen encoder, mean-pooled features, linear head (feature extraction);
    3. full fine-tuning at one learning rate;
    4. full fine-tuning with layer-wise learning-rate decay (LLRD).

    Args:
        encoder_name: Asset name for :func:`~tlutils.core.models.load_text_encoder`; each
            fine-tuning run starts from a fresh copy of the pre-trained weights.
        train, val, test: ``(texts, labels)`` pairs.
        num_classes: Number of classes.
        max_length, batch_size, epochs: Tokenisation and fine-tuning sizes.
        lr: Learning rate of plain fine-tuning.
        head_lr, llrd_decay: The head's rate and the decay factor per block for LLRD.
        probe_epochs, probe_lr: Training of the linear head on cached features (full batch,
            cheap); the validation split picks its best epoch.
        seed: Seeds every random step.
        cache_prefix: Feature cache names start with this (e.g. ``"07_bbc"``); ``None`` disables caching.
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.
        progress: Show progress bars.

    Returns:
        A pandas DataFrame with one row per method: ``trainable params``, ``seconds``
        (training; for the frozen encoder, extracting the training vectors plus the head,
        near zero for the extraction when cached) and ``test accuracy``.
    """
    import time

    import pandas as pd

    from tlutils.core.features import feature_loader, train_linear_probe
    from tlutils.core.models import load_text_encoder
    from tlutils.core.surgery import trainable_parameter_count

    rows = []
    start = time.perf_counter()
    baseline = fit_tfidf_logreg(train[0], train[1], seed=seed)
    rows.append({"method": "TF-IDF + logistic regression", "trainable params": baseline[-1].coef_.size
                 + baseline[-1].intercept_.size, "seconds": time.perf_counter() - start,
                 "test accuracy": float(baseline.score(list(test[0]), np.asarray(test[1])))})

    tokenizer, encoder = load_text_encoder(encoder_name)

    def features_of(split: str, data: tuple[Sequence[str], Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return pooled_features(encoder, tokenizer, data[0], data[1], "mean", max_length, device=device,
                               cache_name=f"{cache_prefix}_{split}" if cache_prefix else None, progress=progress)

    start = time.perf_counter()  # training cost: extracting the training vectors, then the head
    train_features = features_of("train", train)
    head, _ = train_linear_probe(*train_features, num_classes, epochs=probe_epochs, lr=probe_lr,
                                 batch_size=len(train[0]), seed=seed, device=device, val=features_of("val", val))
    seconds = time.perf_counter() - start
    test_features = features_of("test", test)
    rows.append({"method": "frozen encoder + linear head", "trainable params": trainable_parameter_count(head),
                 "seconds": seconds,
                 "test accuracy": _accuracy(head, feature_loader(*test_features, batch_size=256), device)})

    val_loader = text_loader(val[0], val[1], tokenizer, max_length, 64)
    test_loader = text_loader(test[0], test[1], tokenizer, max_length, 64)
    for method, decay in (("full fine-tuning", None), ("fine-tuning with LLRD", llrd_decay)):
        # a new loader per run: both methods see the same batches in the same order
        train_loader = text_loader(train[0], train[1], tokenizer, max_length, batch_size, shuffle=True, seed=seed,
                                   group_by_length=True)
        _, encoder = load_text_encoder(encoder_name)
        model, history = finetune_text_classifier(encoder, train_loader, val_loader, num_classes, epochs, lr=lr,
                                                  llrd_decay=decay, head_lr=head_lr, seed=seed, device=device,
                                                  progress=progress)
        rows.append({"method": method, "trainable params": trainable_parameter_count(model),
                     "seconds": history.seconds, "test accuracy": _accuracy(model, test_loader, device)})
    return pd.DataFrame(rows).set_index("method")
