"""Text classification on a pre-trained encoder (BERT family), and the TF-IDF baseline without pre-training.

:func:`pool_hidden_states` turns token states into one vector per text ([CLS] token
or masked mean), :class:`PooledEncoder` wraps an encoder for
:func:`~tlutils.core.features.extract_features`, :class:`EncoderClassifier` adds a
linear head for :func:`~tlutils.core.train.fit`; :func:`fit_tfidf_logreg` is the
no-pre-training baseline.

Example:
    >>> tokenizer, encoder = load_text_encoder("minilm_l6")
    >>> model = EncoderClassifier(encoder, num_classes=2, pooling="mean")
    >>> loader = text_loader(texts, labels, tokenizer, max_length=64, batch_size=16, shuffle=True, seed=0)
    >>> history = fit(model, loader, epochs=2, lr=5e-5)
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from tlutils.core.datasets import as_class_labels, check_texts, text_loader
from tlutils.core.runtime import check_one_of

POOLINGS = ("cls", "mean")


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """Turn per-token hidden states into one vector per text.

    Args:
        hidden: ``batch x tokens x dim`` last hidden states of an encoder.
        attention_mask: ``batch x tokens``, 1 for real tokens and 0 for padding.
        pooling: ``"cls"`` takes the first token (BERT's ``[CLS]``); ``"mean"`` averages
            the real tokens only, so padding never changes a text's vector.

    Returns:
        ``batch x dim`` tensor.

    Example:
        >>> pool_hidden_states(torch.ones(2, 5, 8), torch.ones(2, 5), "mean").shape
        torch.Size([2, 8])
    """
    check_one_of(pooling, POOLINGS, "pooling")
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"expected hidden states batch x tokens x dim and a matching batch x tokens mask, "
                         f"got {tuple(hidden.shape)} and {tuple(attention_mask.shape)}")
    if pooling == "cls":
        return hidden[:, 0]
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class PooledEncoder(nn.Module):
    """An encoder that returns one pooled vector per text (a feature extractor).

    Args:
        encoder: A Hugging Face encoder such as ``BertModel`` (``last_hidden_state`` output).
        pooling: ``"cls"`` or ``"mean"``, see :func:`pool_hidden_states`.
    """

    def __init__(self, encoder: nn.Module, pooling: str = "mean"):
        super().__init__()
        check_one_of(pooling, POOLINGS, "pooling")
        self.encoder = encoder
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return pool_hidden_states(hidden, attention_mask, self.pooling)

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}"  # part of the feature cache's key, with the weights


class EncoderClassifier(nn.Module):
    """A text classifier: pre-trained encoder, pooling, dropout and a new linear head.

    The head is the attribute ``classifier`` and the body is ``encoder``, so
    :func:`~tlutils.core.surgery.freeze`, :func:`~tlutils.core.surgery.model_blocks` and
    :func:`~tlutils.core.surgery.layerwise_param_groups` work on it unchanged.

    Args:
        encoder: A Hugging Face encoder (``BertModel``); it is trained in place.
        num_classes: Number of classes.
        pooling: ``"cls"`` or ``"mean"``.
        dropout: Dropout before the head (the BERT fine-tuning default is 0.1).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        check_one_of(pooling, POOLINGS, "pooling")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return self.classifier(self.dropout(pool_hidden_states(hidden, attention_mask, self.pooling)))


def fit_tfidf_logreg(texts: Sequence[str], labels: Sequence[int], max_features: int = 30_000,
                     ngram_range: tuple[int, int] = (1, 2), C: float = 10.0, seed: int = 0):
    """The classic baseline without pre-training: TF-IDF word n-grams + logistic regression.

    Args:
        texts: Training texts.
        labels: Their integer labels.
        max_features: Vocabulary size (most frequent n-grams of the training texts).
        ngram_range: Word n-gram lengths, ``(1, 2)`` = words and word pairs.
        C: Inverse regularisation strength of the logistic regression.
        seed: Random state of the solver.

    Returns:
        A fitted scikit-learn ``Pipeline``; call ``.predict(texts)`` or ``.score(texts, labels)``.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = check_texts(texts)
    labels = as_class_labels(labels)
    if len(texts) != len(labels):
        raise ValueError(f"need one label per text, got {len(texts)} texts and {len(labels)} labels")
    pipeline = make_pipeline(TfidfVectorizer(ngram_range=ngram_range, max_features=max_features, sublinear_tf=True),
                             LogisticRegression(C=C, max_iter=2000, random_state=seed))
    return pipeline.fit(texts, labels)


def pooled_features(encoder: nn.Module, tokenizer: Any, texts: Sequence[str], labels: Sequence[int],
                    pooling: str = "mean", max_length: int = 64, batch_size: int = 64, cache_name: str | None = None,
                    device: torch.device | None = None, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled sentence vectors of a frozen encoder, cached on disk by :func:`~tlutils.core.features.extract_features`.

    Args:
        encoder: A Hugging Face encoder (frozen: it is only run in eval mode).
        tokenizer: Its tokenizer.
        texts: The texts to embed.
        labels: Their labels (stored next to the features).
        pooling: ``"cls"`` or ``"mean"``.
        max_length: Texts are truncated to this many tokens.
        batch_size: Texts per forward pass.
        cache_name: File name under ``data/cache/features/`` (start it with the notebook
            number); ``None`` disables the cache. Its key covers the encoder's current
            weights, the pooling, and a hash of the token ids (texts, tokenizer, length)
            and of the labels, so corrected labels or a fine-tuned encoder are never
            served old features.
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.
        progress: Show a progress bar.

    Returns:
        ``(features, labels)``: ``N x hidden`` floats and ``N`` labels.
    """
    from tlutils.core.features import extract_features

    loader = text_loader(texts, labels, tokenizer, max_length=max_length, batch_size=batch_size)
    fingerprint = f"{getattr(encoder.config, '_name_or_path', '')}|{pooling}|{max_length}"
    return extract_features(PooledEncoder(encoder, pooling), loader, cache_name=cache_name, fingerprint=fingerprint,
                            device=device, progress=progress)


def finetune_text_classifier(encoder: nn.Module, train_loader, val_loader, num_classes: int, epochs: int = 2,
                             lr: float = 1e-4, llrd_decay: float | None = None, head_lr: float | None = None,
                             pooling: str = "mean", weight_decay: float = 0.01, seed: int = 0,
                             device: torch.device | None = None, progress: bool = True):
    """Fine-tune an encoder with a new head, all layers at one rate or with layer-wise rate decay.

    Args:
        encoder: The pre-trained encoder (changed in place).
        train_loader: Batches from :func:`text_loader` (shuffled).
        val_loader: Evaluated after every epoch; the best epoch's weights are kept.
        num_classes: Number of classes.
        epochs: Passes over the training data.
        lr: The one learning rate of plain fine-tuning.
        llrd_decay: With a value in (0, 1], use layer-wise learning-rate decay instead:
            the head trains at ``head_lr`` and each block below at the rate above times
            ``llrd_decay`` (:func:`~tlutils.core.surgery.layerwise_param_groups`).
        head_lr: The head's rate with ``llrd_decay``.
        pooling: ``"cls"`` or ``"mean"``.
        weight_decay: AdamW weight decay.
        seed: Seeds the new head and the training.
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.
        progress: Show a progress bar.

    Returns:
        ``(model, history)``: the :class:`EncoderClassifier` and its :class:`~tlutils.core.train.History`.
    """
    from tlutils.core.runtime import seeded
    from tlutils.core.surgery import layerwise_param_groups
    from tlutils.core.train import fit

    with seeded(seed):  # same numbers for the same seed; the caller's random state is left alone
        model = EncoderClassifier(encoder, num_classes, pooling=pooling)
        if llrd_decay is None:
            groups = [{"params": list(model.parameters()), "lr": lr, "weight_decay": weight_decay}]
        else:
            if head_lr is None:
                raise ValueError("layer-wise decay needs head_lr, the learning rate of the head")
            groups = layerwise_param_groups(model, head_lr=head_lr, decay=llrd_decay, weight_decay=weight_decay)
        history = fit(model, train_loader, val_loader, epochs=epochs, optimizer=torch.optim.AdamW(groups),
                      scheduler="linear", seed=seed, device=device, progress=progress)
    return model, history


def per_class_split(labels: Sequence[int], sizes: dict[str, int], seed: int) -> dict[str, "np.ndarray"]:
    """Split examples into named parts with the same number of examples of every class in each.

    Args:
        labels: One integer label per example.
        sizes: Part name -> examples per class, e.g. ``{"train": 300, "val": 100, "test": 1000}``;
            the parts are cut in this order from one random draw per class, so they never overlap.
        seed: The same seed gives the same parts.

    Returns:
        Part name -> indices into ``labels`` (shuffled, classes mixed).

    Example:
        >>> parts = per_class_split([0, 0, 0, 1, 1, 1], {"train": 2, "val": 1}, seed=0)
        >>> [len(parts[name]) for name in ("train", "val")]
        [4, 2]
    """
    import numpy as np

    from tlutils.core.datasets import balanced_subset

    labels = as_class_labels(labels)
    if not sizes or any(int(n) != n or n < 1 for n in sizes.values()):
        raise ValueError(f"sizes must map part names to positive whole numbers per class, got {sizes!r}")
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(balanced_subset(labels, int(sum(sizes.values())), seed=seed))
    parts: dict[str, list[int]] = {name: [] for name in sizes}
    for label in np.unique(labels):
        rows, start = chosen[labels[chosen] == label], 0
        for name, n in sizes.items():
            parts[name] += rows[start:start + int(n)].tolist()
            start += int(n)
    return {name: rng.permutation(np.asarray(idx, dtype=np.int64)) for name, idx in parts.items()}


def paired_gap(scores_a: Sequence[float], scores_b: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of ``a - b`` over the same test examples (per-example scores, paired).

    With 0/1 correctness this is the accuracy difference of two models on one test set; the
    pairing removes the examples both get right or both get wrong from the noise.

    Args:
        scores_a: Per-example scores of the first model (e.g. 1.0 correct, 0.0 wrong, or an F1).
        scores_b: The second model's scores on the same examples, in the same order.

    Returns:
        ``(gap, se)``: mean difference and its standard error (sample std / sqrt(n)).

    Example:
        >>> paired_gap([1, 1, 0, 1], [1, 0, 0, 0])
        (0.5, 0.28867513459481287)
    """
    import numpy as np

    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two equally long 1-D score lists (>= 2 examples), got shapes {a.shape} and {b.shape}")
    difference = a - b
    return float(difference.mean()), float(difference.std(ddof=1) / np.sqrt(len(difference)))


def independent_gap(accuracy_a: float, n_a: int, accuracy_b: float, n_b: int) -> tuple[float, float]:
    """Difference of two accuracies measured on two different test sets, with its standard error.

    Each accuracy is a mean of ``n`` correct/wrong outcomes, with variance ``p (1 - p) / n``;
    the two sets are independent, so the variances add.

    Args:
        accuracy_a: Accuracy on the first test set (e.g. in domain).
        n_a: Its number of examples.
        accuracy_b: Accuracy on the second test set (e.g. after a domain shift).
        n_b: Its number of examples.

    Returns:
        ``(gap, se)`` with ``gap = accuracy_a - accuracy_b``.

    Example:
        >>> gap, se = independent_gap(0.8, 1000, 0.7, 1000)
        >>> round(gap, 3), round(se, 4)
        (0.1, 0.0195)
    """
    import math

    for p, n in ((accuracy_a, n_a), (accuracy_b, n_b)):
        if not 0.0 <= p <= 1.0 or int(n) != n or n < 1:
            raise ValueError(f"accuracies must lie in [0, 1] and sizes be positive whole numbers, got {p!r} on {n!r}")
    return float(accuracy_a - accuracy_b), math.sqrt(accuracy_a * (1 - accuracy_a) / n_a + accuracy_b * (1 - accuracy_b) / n_b)
