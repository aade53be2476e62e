"""The mathematics of fine-tuning as code: penalties, distances, gradients and the joint objective.

* :func:`l2_penalty` pulls weights to zero; :func:`l2_sp_penalty` pulls the body back
  to its pre-trained starting point (L2-SP, Li et al. 2018); :class:`PenalizedLoss`
  adds either to a task loss.
* :func:`weight_distance_per_block` and :func:`gradient_norm_per_block` show how far
  training moves each block and which blocks receive gradient.
* :class:`TwoHeadNet` and :func:`joint_step` train ``L_source + lambda * L_target``
  through :func:`~tlutils.core.train.fit` (:func:`fit_joint`).
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import torch
from torch import nn

from tlutils.core.runtime import resolve_device
from tlutils.core.surgery import belongs_to, decayed_parameter_names, head_name, model_blocks
from tlutils.core.train import History, Loss, Step, fit, map_batches, unpack_batch


def snapshot_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of every parameter, e.g. the pre-trained starting point ``w0``.

    Args:
        model: Any module.

    Returns:
        ``{parameter name: tensor}``; later training does not change the copies.
    """
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def _head_prefix(model: nn.Module, head: str | None) -> str | None:
    """The head's module name: ``head`` if given, else the first known head attribute, else None."""
    if head is not None:
        if not isinstance(getattr(model, head, None), nn.Module):
            raise ValueError(f"the model has no module {head!r} to treat as the head")
        return head
    try:
        return head_name(model)
    except ValueError:  # a bare body without a head
        return None


def _in_module(param_name: str, prefix: str | None) -> bool:
    return prefix is not None and belongs_to(param_name, prefix)


def l2_penalty(model: nn.Module, alpha: float, skip_norms_and_biases: bool = False) -> torch.Tensor:
    """Plain L2 regularisation (weight decay as a loss term): ``alpha/2 * sum ||w||^2``.

    Only trainable parameters count. This pulls every weight towards **zero**, so on a
    pre-trained body it pulls the weights away from what pre-training learned.

    Args:
        model: The network being trained.
        alpha: Strength, ``>= 0``.
        skip_norms_and_biases: Leave biases and normalisation layers out, as practice does
            (:func:`~tlutils.core.surgery.decayed_parameter_names`).

    Returns:
        A scalar tensor that carries gradients.
    """
    _check_strength("alpha", alpha)
    keep = decayed_parameter_names(model) if skip_norms_and_biases else None
    squares = [param.pow(2).sum() for name, param in model.named_parameters()
               if param.requires_grad and (keep is None or name in keep)]
    return alpha / 2 * torch.stack(squares).sum() if squares else torch.zeros(())


def l2_sp_penalty(model: nn.Module, reference: dict[str, torch.Tensor], alpha: float,
                  beta: float = 0.0, head: str | None = None, skip_norms_and_biases: bool = False) -> torch.Tensor:
    """The L2-SP penalty of Li, Grandvalet and Davoine (2018).

    ``alpha/2 * ||w_body - w0||^2 + beta/2 * ||w_head||^2``: body weights are pulled
    towards their pre-trained values ``w0`` (a new head has no pre-trained value, so it
    gets plain weight decay with strength ``beta``). Only trainable parameters count.

    Args:
        model: The network being fine-tuned.
        reference: The starting point from :func:`snapshot_weights`, taken before training.
        alpha: Strength of the pull towards ``w0``, ``>= 0``.
        beta: Weight decay of the head (and of any parameter missing from ``reference``).
        head: Module name of the head; default: the model's head attribute (``classifier``,
            ``fc``, ...), if any.
        skip_norms_and_biases: Leave biases and normalisation layers out of both terms.

    Returns:
        A scalar tensor that carries gradients.

    Raises:
        ValueError: a negative strength, or a reference tensor whose shape differs from
            the model's parameter of the same name (a reference from another model).
    """
    _check_strength("alpha", alpha)
    _check_strength("beta", beta)
    head = _head_prefix(model, head)
    keep = decayed_parameter_names(model) if skip_norms_and_biases else None
    total = torch.zeros(())
    for name, param in model.named_parameters():
        if not param.requires_grad or (keep is not None and name not in keep):
            continue
        if _in_module(name, head) or name not in reference:
            total = total.to(param.device) + beta / 2 * param.pow(2).sum()
            continue
        start = reference[name]
        if start.shape != param.shape:
            raise ValueError(f"reference[{name!r}] has shape {tuple(start.shape)} but the model's parameter has "
                             f"{tuple(param.shape)}; take the snapshot from this model before training")
        total = total.to(param.device) + alpha / 2 * (param - start.to(param.device)).pow(2).sum()
    return total


def _check_strength(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")


class PenalizedLoss(nn.Module):
    """Cross-entropy plus a regularisation penalty, usable as ``fit(..., loss_fn=...)``.

    The penalty is added only while training (when the logits carry gradients), so
    the validation loss that :func:`~tlutils.core.train.fit` records stays plain
    cross-entropy and runs with different penalties can be compared directly.

    Args:
        penalty: Called without arguments, returns a scalar tensor, e.g.
            ``lambda: l2_sp_penalty(model, start, alpha=0.1)``.
        base_loss: The data loss; default cross-entropy.
    """

    def __init__(self, penalty: Callable[[], torch.Tensor], base_loss: nn.Module | None = None):
        super().__init__()
        if not callable(penalty):
            raise ValueError("penalty must be a function without arguments that returns a scalar tensor")
        self.penalty = penalty
        self.base_loss = base_loss or nn.CrossEntropyLoss()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.base_loss(logits, targets)
        return loss + self.penalty().to(loss.device) if logits.requires_grad else loss


PENALTY_KINDS = ("none", "l2", "l2_sp")


def make_penalty(kind: str, model: nn.Module, reference: dict[str, torch.Tensor] | None = None,
                 alpha: float = 0.0, beta: float | None = None,
                 skip_norms_and_biases: bool = False) -> Callable[[], torch.Tensor]:
    """A penalty function for :class:`PenalizedLoss`, chosen by name.

    Args:
        kind: ``"none"``, ``"l2"`` (pull every weight towards zero) or ``"l2_sp"``
            (pull the body towards ``reference``, the head towards zero).
        model: The network being trained.
        reference: The starting point (needed for ``"l2_sp"``).
        alpha: Strength of the pull.
        beta: Head weight decay for ``"l2_sp"``; default ``alpha``, so that L2 and L2-SP
            differ only in where they pull the body.
        skip_norms_and_biases: Leave biases and normalisation layers out (as practice does).

    Returns:
        A function without arguments that returns the penalty as a scalar tensor.
    """
    if kind not in PENALTY_KINDS:
        raise ValueError(f"unknown penalty {kind!r}; choose one of {PENALTY_KINDS}")
    _check_strength("alpha", alpha)
    if kind == "none":
        return lambda: torch.zeros(())
    if kind == "l2":
        return lambda: l2_penalty(model, alpha, skip_norms_and_biases)
    if reference is None:
        raise ValueError("the l2_sp penalty needs reference=snapshot_weights(model), taken before training")
    return lambda: l2_sp_penalty(model, reference, alpha, alpha if beta is None else beta,
                                 skip_norms_and_biases=skip_norms_and_biases)


def _named_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The body blocks (input side first) followed by the head, when there is one."""
    blocks = model_blocks(model)
    head = _head_prefix(model, None)
    if head is not None and head not in {name for name, _ in blocks}:
        blocks = blocks + [(head, getattr(model, head))]
    return blocks


def _block_parameters(model: nn.Module, block_name: str) -> list[tuple[str, nn.Parameter]]:
    return [(name, param) for name, param in model.named_parameters() if _in_module(name, block_name)]


def weight_distance_per_block(model: nn.Module, reference: dict[str, torch.Tensor]) -> list[dict]:
    """How far each block's weights moved from ``reference`` (e.g. the pre-trained start).

    Args:
        model: The network after training.
        reference: Weights from :func:`snapshot_weights`, taken before training.

    Returns:
        One dict per block that has parameters, input side first, then the head:
        ``block``, ``params``, ``distance`` (``||w - w0||``) and ``relative``
        (``||w - w0|| / ||w0||``, 0 when ``w0`` is all zeros).

    Raises:
        ValueError: the reference lacks a parameter of the model.
    """
    missing = [name for name, _ in model.named_parameters() if name not in reference]
    if missing:
        raise ValueError(f"reference has no entry for {missing[:3]}; take the snapshot from this model")
    rows = []
    for block_name, _ in _named_blocks(model):
        params = _block_parameters(model, block_name)
        if not params:
            continue
        moved = torch.stack([(p.detach().cpu() - reference[n].cpu()).pow(2).sum() for n, p in params]).sum().sqrt()
        size = torch.stack([reference[n].cpu().pow(2).sum() for n, _ in params]).sum().sqrt()
        rows.append({"block": block_name, "params": sum(p.numel() for _, p in params),
                     "distance": float(moved), "relative": float(moved / size) if size > 0 else 0.0})
    return rows


def total_weight_distance(model: nn.Module, reference: dict[str, torch.Tensor],
                          exclude: Sequence[str] = ()) -> float:
    """``||w - w0||`` over all parameters, leaving out modules named in ``exclude`` (e.g. the head)."""
    squares = [(p.detach().cpu() - reference[n].cpu()).pow(2).sum() for n, p in model.named_parameters()
               if not any(_in_module(n, prefix) for prefix in exclude)]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


def gradient_norm_per_block(model: nn.Module) -> list[dict]:
    """After ``loss.backward()``: which blocks received gradients, and how large they are.

    Returns:
        One dict per block with parameters: ``block``, ``trainable`` (parameters with
        ``requires_grad``), ``with_grad`` (parameters whose ``.grad`` is not None) and
        ``grad_norm`` (0.0 when no parameter of the block has a gradient).
    """
    rows = []
    for block_name, _ in _named_blocks(model):
        params = [p for _, p in _block_parameters(model, block_name)]
        if not params:
            continue
        grads = [p.grad for p in params if p.grad is not None]
        norm = float(torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt()) if grads else 0.0
        rows.append({"block": block_name, "trainable": sum(p.numel() for p in params if p.requires_grad),
                     "with_grad": sum(p.numel() for p in params if p.grad is not None), "grad_norm": norm})
    return rows


class TwoHeadNet(nn.Module):
    """A shared body with one head per task: ``model(x, task)`` for task ``"source"`` or ``"target"``.

    Args:
        shared: Maps inputs to a shared representation (trainable or frozen).
        source_head: Maps the representation to source-class logits.
        target_head: Maps the representation to target-class logits.
    """

    TASKS = ("source", "target")

    def __init__(self, shared: nn.Module, source_head: nn.Module, target_head: nn.Module):
        super().__init__()
        self.shared = shared
        self.heads = nn.ModuleDict({"source": source_head, "target": target_head})

    def forward(self, inputs: torch.Tensor, task: str = "target") -> torch.Tensor:
        if task not in self.TASKS:
            raise ValueError(f"task must be one of {self.TASKS}, got {task!r}")
        return self.heads[task](self.shared(inputs))


def joint_loss(source_loss: torch.Tensor, target_loss: torch.Tensor, lam: float) -> torch.Tensor:
    """``L_total = L_source + lam * L_target``.

    Args:
        source_loss: Loss of the source head on a source batch.
        target_loss: Loss of the target head on a target batch.
        lam: Weight of the target task, ``>= 0`` (0 trains on the source alone).
    """
    _check_strength("lam", lam)
    return source_loss + lam * target_loss


def joint_step(lam: float, loss_fn: nn.Module | None = None) -> Step:
    """The step function of ``L_source + lam * L_target`` for :func:`~tlutils.core.train.fit`.

    Each batch is a ``(source_batch, target_batch)`` pair (see :class:`JointBatches`);
    the two task losses are logged as ``source_loss`` and ``target_loss``.

    Args:
        lam: Weight of the target loss, ``>= 0``.
        loss_fn: Loss of each head; cross-entropy by default.
    """
    _check_strength("lam", lam)
    loss_fn = loss_fn or nn.CrossEntropyLoss()

    def step(model: TwoHeadNet, batch, device: torch.device) -> Loss:
        (source_x, source_y), (target_x, target_y) = (unpack_batch(part, device) for part in batch)
        source_loss = loss_fn(model(source_x, "source"), source_y)
        target_loss = loss_fn(model(target_x, "target"), target_y)
        return Loss(joint_loss(source_loss, target_loss, lam),
                    {"source_loss": source_loss.item(), "target_loss": target_loss.item()})

    return step


class JointBatches:
    """Pairs of one source and one target batch; an epoch is one pass over the source loader.

    The (usually smaller) target loader is cycled: its batches of the epoch's first pass
    repeat until the source batches run out.
    """

    def __init__(self, source_loader, target_loader):
        if len(source_loader) == 0 or len(target_loader) == 0:
            raise ValueError("source_loader and target_loader must both yield batches")
        self.source_loader, self.target_loader = source_loader, target_loader

    def __len__(self) -> int:
        return len(self.source_loader)

    def __iter__(self):
        return zip(self.source_loader, itertools.cycle(self.target_loader))


def joint_accuracy(model: TwoHeadNet, loader, task: str, device: torch.device | None = None) -> float:
    """Accuracy of one head of a :class:`TwoHeadNet` on ``loader``."""
    device = resolve_device(device)
    model.eval().to(device)
    counts = map_batches(lambda inputs, targets: (int((model(inputs, task).argmax(-1) == targets).sum()),
                                                  len(targets)), loader, device)
    return sum(correct for correct, _ in counts) / sum(n for _, n in counts)


def fit_joint(model: TwoHeadNet, source_loader, target_loader, lam: float, *, epochs: int, lr: float,
              device: torch.device | None = None, source_val=None, target_val=None, weight_decay: float = 0.0,
              seed: int | None = None, progress: bool = False) -> History:
    """Minimise ``L_source + lam * L_target`` with AdamW, one source and one target batch per step.

    :func:`joint_step` passed to :func:`~tlutils.core.train.fit`, which brings the progress bar,
    the non-finite-loss check and the :class:`~tlutils.core.train.History`. An epoch is one pass
    over ``source_loader``; the target loader is cycled (:class:`JointBatches`).

    Args:
        model: A :class:`TwoHeadNet`.
        source_loader: ``(inputs, labels)`` batches of the source task.
        target_loader: ``(inputs, labels)`` batches of the target task.
        lam: Weight of the target loss, ``>= 0``.
        epochs: Passes over the source data.
        lr: AdamW learning rate.
        device: Where to train; ``None`` picks :func:`~tlutils.core.runtime.get_device`.
        source_val: Optional loader; adds ``val_source_accuracy`` to each epoch.
        target_val: Optional loader; adds ``val_target_accuracy`` to each epoch.
        weight_decay: AdamW weight decay.
        seed: Seeds the run (``None``: seed before calling for a reproducible run).
        progress: Show a progress bar.

    Returns:
        A :class:`~tlutils.core.train.History` with ``train_loss`` (the joint loss),
        ``source_loss`` and ``target_loss`` per epoch (means over the steps).
    """
    scorers = {task: loader for task, loader in (("source", source_val), ("target", target_val)) if loader is not None}

    def validate(trained: TwoHeadNet, on: torch.device) -> dict:
        return {f"{task}_accuracy": joint_accuracy(trained, loader, task, on) for task, loader in scorers.items()}

    return fit(model, JointBatches(source_loader, target_loader), epochs=epochs, lr=lr, weight_decay=weight_decay,
               step=joint_step(lam), validate=validate if scorers else None, monitor=None, device=device,
               seed=seed, progress=progress, desc=f"lambda = {lam:g}")
