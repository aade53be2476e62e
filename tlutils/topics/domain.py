"""Domain shift, measured and reduced: the proxy A-distance, CORAL, gradient reversal and DANN.

* :func:`proxy_a_distance` scores a shift: how well a classifier tells source from target features.
* :class:`BodyHead` is a network split into a ``body`` (the features) and a ``head`` (the labels),
  with an optional ``domain_head`` for adversarial training.
* :func:`grad_reverse` / :class:`GradientReversal` pass values through unchanged and multiply the
  gradient by ``-strength`` (Ganin and Lempitsky, 2015).
* :func:`dann_step`, :func:`coral_step` and :func:`labelled_target_step` are step functions for
  :func:`~tlutils.core.train.fit`; each batch is a ``(source_batch, target_batch)`` pair, for example
  from :class:`~tlutils.topics.regularizers.JointBatches`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tlutils.core.train import Loss, Step, unpack_batch


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.strength * grad, None


def _check_weight(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def grad_reverse(inputs: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """The identity on the way forward; the gradient times ``-strength`` on the way back.

    Placed between the features and a domain classifier, it makes one ``backward()`` train the
    classifier to *tell* the domains apart and the features to make them *indistinguishable*.

    Args:
        inputs: Any tensor (usually the body's features).
        strength: How strongly the reversed gradient pushes the features, ``>= 0``.

    Returns:
        A tensor equal to ``inputs``.
    """
    _check_weight("strength", strength)
    return _ReverseGradient.apply(inputs, float(strength))


class GradientReversal(nn.Module):
    """:func:`grad_reverse` as a layer, for use inside ``nn.Sequential``."""

    def __init__(self, strength: float = 1.0):
        super().__init__()
        _check_weight("strength", strength)
        self.strength = float(strength)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return grad_reverse(inputs, self.strength)


class BodyHead(nn.Module):
    """``head(body(x))``, with the body's features reachable for alignment losses.

    Args:
        body: Maps inputs to an ``N x D`` feature matrix.
        head: Maps features to class logits.
        domain_head: Optional; maps features to two logits (source, target) for :func:`dann_step`.
    """

    def __init__(self, body: nn.Module, head: nn.Module, domain_head: nn.Module | None = None):
        super().__init__()
        self.body, self.head = body, head
        self.domain_head = domain_head

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(inputs))


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Deep CORAL loss (Sun and Saenko, 2016): ``||C_s - C_t||_F^2 / (4 d^2)``.

    ``C_s`` and ``C_t`` are the feature covariances of a source and a target batch. It is zero when
    both batches have the same second-order statistics, and needs no target labels.

    Args:
        source: ``N x D`` source features (``N >= 2``).
        target: ``M x D`` target features (``M >= 2``).

    Returns:
        A scalar tensor that carries gradients.
    """
    if source.dim() != 2 or target.dim() != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(f"expected N x D and M x D features, got {tuple(source.shape)} and {tuple(target.shape)}")
    if len(source) < 2 or len(target) < 2:
        raise ValueError("a covariance needs at least two rows per batch; raise the batch size")
    dim = source.shape[1]
    return (_covariance(source) - _covariance(target)).pow(2).sum() / (4 * dim * dim)


def _covariance(features: torch.Tensor) -> torch.Tensor:
    centred = features - features.mean(dim=0, keepdim=True)
    return centred.T @ centred / (len(features) - 1)


def _pair(batch, device: torch.device):
    if not (isinstance(batch, (list, tuple)) and len(batch) == 2
            and all(isinstance(part, (list, tuple, dict)) for part in batch)):
        raise ValueError("each batch must be a (source_batch, target_batch) pair; wrap the two loaders in "
                         "JointBatches(source_loader, target_loader)")
    return unpack_batch(batch[0], device), unpack_batch(batch[1], device)


def dann_step(strength: float = 1.0, loss_fn: nn.Module | None = None) -> Step:
    """Domain-adversarial training (DANN): source labels plus an adversary on unlabelled target inputs.

    Loss = task cross-entropy on the source batch + domain cross-entropy (source 0, target 1) on
    both batches, computed through :func:`grad_reverse`. The target labels are never read.

    Args:
        strength: Weight of the reversed gradient that reaches the body.
        loss_fn: The task loss; cross-entropy by default.

    Returns:
        A step for :func:`~tlutils.core.train.fit` on a :class:`BodyHead` with a ``domain_head``;
        it logs ``task`` and ``domain`` (the adversary's loss: about 0.69 when it cannot tell).
    """
    _check_weight("strength", strength)
    loss_fn = loss_fn or nn.CrossEntropyLoss()

    def step(model: BodyHead, batch, device: torch.device) -> Loss:
        if getattr(model, "domain_head", None) is None:
            raise ValueError("dann_step needs BodyHead(body, head, domain_head=nn.Linear(D, 2))")
        (source_x, source_y), (target_x, _) = _pair(batch, device)
        features = model.body(torch.cat([source_x, target_x]))
        task = loss_fn(model.head(features[: len(source_x)]), source_y)
        domains = torch.cat([torch.zeros(len(source_x)), torch.ones(len(target_x))]).long().to(device)
        domain = nn.functional.cross_entropy(model.domain_head(grad_reverse(features, strength)), domains)
        return Loss(task + domain, {"task": task.item(), "domain": domain.item()}, len(source_x))

    return step


def coral_step(weight: float = 1.0, loss_fn: nn.Module | None = None) -> Step:
    """Source cross-entropy plus ``weight`` times :func:`coral_loss` between source and target features.

    Returns:
        A step for :func:`~tlutils.core.train.fit` on a :class:`BodyHead`; logs ``task`` and ``coral``.
    """
    _check_weight("weight", weight)
    loss_fn = loss_fn or nn.CrossEntropyLoss()

    def step(model: BodyHead, batch, device: torch.device) -> Loss:
        (source_x, source_y), (target_x, _) = _pair(batch, device)
        features = model.body(torch.cat([source_x, target_x]))
        task = loss_fn(model.head(features[: len(source_x)]), source_y)
        alignment = coral_loss(features[: len(source_x)], features[len(source_x):])
        return Loss(task + weight * alignment, {"task": task.item(), "coral": alignment.item()}, len(source_x))

    return step


def labelled_target_step(target_weight: float = 1.0, loss_fn: nn.Module | None = None) -> Step:
    """Cross-entropy on a source batch plus ``target_weight`` times cross-entropy on a labelled target batch.

    One head serves both domains (the classes are the same); this is the "a few target labels" remedy.
    """
    _check_weight("target_weight", target_weight)
    loss_fn = loss_fn or nn.CrossEntropyLoss()

    def step(model: nn.Module, batch, device: torch.device) -> Loss:
        (source_x, source_y), (target_x, target_y) = _pair(batch, device)
        source, target = loss_fn(model(source_x), source_y), loss_fn(model(target_x), target_y)
        return Loss(source + target_weight * target, {"source": source.item(), "target": target.item()},
                    len(source_x))

    return step


def proxy_a_distance(source: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, seed: int = 0,
                     C: float = 0.1) -> dict[str, float]:
    """How different two domains look to a linear classifier (Ben-David et al., 2007).

    A logistic regression learns to tell source from target features on one half of each and is scored
    on the other half (both domains subsampled to the same size). With its error ``e`` the proxy
    A-distance is ``2 (1 - 2 e)``: 0 when the domains cannot be told apart, 2 when they always can.

    Args:
        source: ``N x D`` source features.
        target: ``M x D`` target features.
        seed: Seeds the subsampling and the split.
        C: Inverse L2 strength of the classifier.

    Returns:
        ``{"domain_accuracy": ..., "proxy_a_distance": ...}`` on the held-out halves.
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if source.ndim != 2 or target.ndim != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(f"expected N x D and M x D features, got {source.shape} and {target.shape}")
    n = min(len(source), len(target))
    if n < 4:
        raise ValueError(f"need at least 4 examples per domain, got {len(source)} and {len(target)}")
    rng = np.random.default_rng(seed)
    source, target = source[rng.permutation(len(source))[:n]], target[rng.permutation(len(target))[:n]]
    half = n // 2
    x_fit, x_test = np.concatenate([source[:half], target[:half]]), np.concatenate([source[half:], target[half:]])
    y_fit = np.r_[np.zeros(half), np.ones(half)]
    y_test = np.r_[np.zeros(n - half), np.ones(n - half)]
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-8
    with threadpool_limits(limits=1):
        classifier = LogisticRegression(C=C, max_iter=2000).fit((x_fit - mean) / std, y_fit)
    accuracy = float(classifier.score((x_test - mean) / std, y_test))
    return {"domain_accuracy": accuracy, "proxy_a_distance": 2 * (1 - 2 * (1 - accuracy))}
