"""Fine-tuning strategies, each a function that trains a model and reports what it trained.

Feature extraction, partial fine-tuning (the last k blocks), full fine-tuning,
layer-wise learning rates, gradual unfreezing and LP-FT (a linear probe, then
fine-tuning). Every strategy starts from a model with its new head (the right number of
classes, see :func:`~tlutils.core.surgery.replace_head`) and leaves it ready for
evaluation; each returns a :class:`StrategyRun` with its histories and counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from tlutils.core.features import extract_features, feature_loader
from tlutils.core.surgery import (
    freeze,
    freeze_body_except_last,
    head_name,
    layerwise_param_groups,
    param_group_table,
    pooled_body,
    trainable_parameter_count,
    unfreeze,
)
from tlutils.core.train import History, fit


@dataclass
class StrategyRun:
    """The record of one strategy: its training stages, size and cost.

    Attributes:
        name: Short name of the strategy, used as the table row label.
        stages: ``(stage name, History)`` pairs in the order they ran.
        trainable_params: The most parameters trained at the same time.
        seconds: Wall time, including feature extraction when the cache was cold.
        details: Extra text worth printing (e.g. the learning rate of every parameter group).
    """

    name: str
    stages: list[tuple[str, History]] = field(default_factory=list)
    trainable_params: int = 0
    seconds: float = 0.0
    details: str = ""

    @property
    def history(self) -> History:
        """All stages as one :class:`~tlutils.core.train.History`, epochs numbered on, with a ``stage`` column."""
        merged = History()
        for stage, history in self.stages:
            for row in history.epochs:
                merged.epochs.append({**row, "epoch": len(merged.epochs) + 1, "stage": stage})
        return merged


def _check_positive(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _check_not_shuffled(loader, what: str) -> None:
    if isinstance(getattr(loader, "sampler", None), RandomSampler):
        raise ValueError(f"{what} shuffles, but cached features must line up with a fixed order: "
                         "build it with shuffle=False (the features are shuffled for training instead)")


def _fit_stage(model: nn.Module, train_loader, val_loader, *, epochs: int, lr: float | None,
               device: torch.device | None, seed: int, optimizer=None, scheduler=None,
               progress: bool = False) -> History:
    """One ``fit`` call: at learning rate ``lr`` with the default AdamW, or with ``optimizer`` (then ``lr=None``)."""
    _check_positive("epochs", epochs)
    if optimizer is None:
        _check_positive("lr", lr)
    return fit(model, train_loader, val_loader, epochs=epochs, lr=lr, optimizer=optimizer, scheduler=scheduler,
               device=device, seed=seed, progress=progress)


def _head_step_loader(features: torch.Tensor, labels: torch.Tensor, batch_size: int, steps: int,
                      seed: int) -> DataLoader:
    """Exactly ``steps`` batches of cached features, drawn with replacement: a step budget that ignores set size."""
    sampler = RandomSampler(range(len(labels)), replacement=True, num_samples=steps * batch_size,
                            generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(features, labels), batch_size=batch_size, sampler=sampler)


def feature_extraction(model: nn.Module, train_loader, val_loader, *, epochs: int, lr: float,
                       device: torch.device | None = None, cache_name: str | None = None, fingerprint: str = "",
                       batch_size: int = 64, seed: int = 0, steps: int | None = None,
                       progress: bool = False) -> StrategyRun:
    """Freeze the body, compute its features once (cached), train only the head on them.

    Args:
        model: A CNN with ``features`` and a head already sized for the target classes.
        train_loader: Training images in a fixed order (``shuffle=False``).
        val_loader: Validation images in a fixed order.
        epochs: Epochs of head training on the cached features.
        lr: AdamW learning rate of the head.
        device: Where to run; ``None`` picks :func:`~tlutils.core.runtime.get_device`.
        cache_name: Prefix of the feature cache files (``<name>_train``, ``<name>_val``);
            ``None`` disables caching.
        fingerprint: Optional extra text for the cache keys; the body's current weights and the
            content of the images and labels are part of the keys already, so a stale cache is
            rebuilt.
        batch_size: Batch size of head training.
        seed: Seeds the feature shuffling and the training.
        steps: A step budget for the head: exactly this many optimizer steps, batches drawn with
            replacement, whatever the set size; ``epochs`` then counts the validation checkpoints
            spread over them (``steps`` must be a multiple of ``epochs``). ``None``: whole epochs.
        progress: Show progress bars.

    Returns:
        The :class:`StrategyRun`; the model's head is trained, its body unchanged.
    """
    _check_not_shuffled(train_loader, "train_loader")
    _check_not_shuffled(val_loader, "val_loader")
    start = time.perf_counter()
    head = getattr(model, head_name(model))
    freeze(model)
    unfreeze(model, [head_name(model)])
    body = pooled_body(model)
    splits = {}
    for split, loader in (("train", train_loader), ("val", val_loader)):
        name = f"{cache_name}_{split}" if cache_name else None
        splits[split] = extract_features(body, loader, name, f"{fingerprint}|{split}", device, progress)
    if steps is None:
        train_features = feature_loader(*splits["train"], batch_size, shuffle=True, seed=seed)
    else:
        _check_positive("steps", steps)
        if steps % epochs:
            raise ValueError(f"steps ({steps}) must be a multiple of epochs ({epochs}, the validation checkpoints)")
        train_features = _head_step_loader(*splits["train"], batch_size, steps // epochs, seed)
    history = _fit_stage(head, train_features,
                         feature_loader(*splits["val"], batch_size), epochs=epochs, lr=lr, device=device,
                         seed=seed, progress=progress)
    return StrategyRun("feature extraction", [("head on cached features", history)],
                       trainable_parameter_count(model), time.perf_counter() - start)


def partial_fine_tuning(model: nn.Module, train_loader, val_loader, *, blocks: int, epochs: int, lr: float,
                        device: torch.device | None = None, seed: int = 0, scheduler=None, progress: bool = False) -> StrategyRun:
    """Train the head and the last ``blocks`` body blocks; everything below stays frozen.

    Frozen BatchNorm layers keep their pre-trained statistics (``fit`` uses
    :func:`~tlutils.core.surgery.set_train_mode`).

    Args:
        model: A pre-trained network with a target-sized head.
        blocks: How many body blocks, counted from the top, to train (0 = head only).
        epochs, lr, device, seed, scheduler, progress: As for :func:`~tlutils.core.train.fit`.
    """
    start = time.perf_counter()
    freeze_body_except_last(model, blocks)
    history = _fit_stage(model, train_loader, val_loader, epochs=epochs, lr=lr, device=device, seed=seed,
                         scheduler=scheduler, progress=progress)
    return StrategyRun(f"partial (last {blocks} blocks)", [(f"last {blocks} blocks", history)],
                       trainable_parameter_count(model), time.perf_counter() - start)


def full_fine_tuning(model: nn.Module, train_loader, val_loader, *, epochs: int, lr: float,
                     device: torch.device | None = None, seed: int = 0, scheduler=None, progress: bool = False) -> StrategyRun:
    """Train every parameter with one learning rate (AdamW)."""
    start = time.perf_counter()
    unfreeze(model)
    history = _fit_stage(model, train_loader, val_loader, epochs=epochs, lr=lr, device=device, seed=seed,
                         scheduler=scheduler, progress=progress)
    return StrategyRun("full fine-tuning", [("all layers", history)], trainable_parameter_count(model),
                       time.perf_counter() - start)


def grouped_block_lrs(num_blocks: int, group_lrs: Sequence[float]) -> list[float]:
    """Discriminative learning rates: split the blocks into contiguous groups, one rate each.

    Args:
        num_blocks: Number of body blocks (``len(model_blocks(model))``).
        group_lrs: One rate per group, input side first, e.g. ``[1e-5, 1e-4, 1e-3]``
            for bottom, middle and top.

    Returns:
        One rate per block, for ``layerwise_param_groups(..., block_lrs=...)``.

    Example:
        >>> grouped_block_lrs(5, [0.1, 1.0])
        [0.1, 0.1, 0.1, 1.0, 1.0]
    """
    if not group_lrs or len(group_lrs) > num_blocks:
        raise ValueError(f"need between 1 and {num_blocks} group rates (one per group), got {len(group_lrs)}")
    for lr in group_lrs:
        _check_positive("every group rate", lr)
    sizes = [len(part) for part in np.array_split(np.arange(num_blocks), len(group_lrs))]
    return [float(lr) for lr, size in zip(group_lrs, sizes) for _ in range(size)]


def layerwise_lr_fine_tuning(model: nn.Module, train_loader, val_loader, *, epochs: int, head_lr: float,
                             device: torch.device | None = None, decay: float = 1.0, block_lrs: Sequence[float] | None = None,
                             name: str | None = None, seed: int = 0, scheduler=None,
                             progress: bool = False) -> StrategyRun:
    """Train everything with a learning rate per block: low near the input, high at the head.

    Either layer-wise decay (``decay`` < 1: each block down from the head gets the
    rate above times ``decay``) or explicit discriminative rates (``block_lrs``, one
    per block, e.g. from :func:`grouped_block_lrs`).

    Args:
        model: A pre-trained network with a target-sized head.
        epochs: Training epochs.
        head_lr: Learning rate of the head.
        device: Where to train; ``None`` picks :func:`~tlutils.core.runtime.get_device`.
        decay: Layer-wise decay factor in (0, 1].
        block_lrs: Explicit per-block rates (input side first); overrides ``decay``.
        name: Row label; default says which variant ran.
        seed, scheduler, progress: As for :func:`~tlutils.core.train.fit`.

    Returns:
        The run; ``details`` holds the table of parameter groups and their rates.
    """
    _check_positive("head_lr", head_lr)
    start = time.perf_counter()
    unfreeze(model)
    groups = layerwise_param_groups(model, head_lr=head_lr, decay=decay, block_lrs=block_lrs)
    optimizer = torch.optim.AdamW(groups)
    history = _fit_stage(model, train_loader, val_loader, epochs=epochs, lr=None, device=device, seed=seed,
                         optimizer=optimizer, scheduler=scheduler, progress=progress)
    label = name or ("discriminative rates" if block_lrs is not None else f"layer-wise decay {decay:g}")
    return StrategyRun(label, [("all layers, per-block rates", history)], trainable_parameter_count(model),
                       time.perf_counter() - start, param_group_table(groups))


def gradual_unfreezing(model: nn.Module, train_loader, val_loader, *, schedule: Sequence[int],
                       epochs_per_stage: int, lr: float | Sequence[float], device: torch.device | None = None,
                       seed: int = 0, progress: bool = False) -> StrategyRun:
    """Unfreeze from the top down: stage ``i`` trains the head and the last ``schedule[i]`` blocks.

    Each stage starts a fresh optimizer over the parameters trainable in that stage
    (ULMFiT's recipe, without its triangular schedule).

    Args:
        model: A pre-trained network with a target-sized head.
        schedule: Non-decreasing numbers of trainable blocks, e.g. ``[0, 3, 8, 19]``.
        epochs_per_stage: Epochs in every stage.
        lr: One learning rate, or one per stage (often lower as more blocks thaw).
        device, seed, progress: As for :func:`~tlutils.core.train.fit`.
    """
    lrs = [lr] * len(schedule) if isinstance(lr, (int, float)) else list(lr)
    if not schedule or len(lrs) != len(schedule):
        raise ValueError(f"schedule needs at least one stage and one learning rate per stage, "
                         f"got {len(schedule)} stages and {len(lrs)} rates")
    if any(later < earlier for earlier, later in zip(schedule, schedule[1:])):
        raise ValueError(f"schedule must not decrease (blocks are unfrozen, never frozen again): {list(schedule)}")
    start, run = time.perf_counter(), StrategyRun("gradual unfreezing")
    for stage, (blocks, stage_lr) in enumerate(zip(schedule, lrs)):
        freeze_body_except_last(model, blocks)
        run.trainable_params = max(run.trainable_params, trainable_parameter_count(model))
        history = _fit_stage(model, train_loader, val_loader, epochs=epochs_per_stage, lr=stage_lr,
                             device=device, seed=seed + stage, progress=progress)
        run.stages.append((f"last {blocks} blocks", history))
    run.seconds = time.perf_counter() - start
    return run


def linear_probe_then_fine_tune(model: nn.Module, probe_train_loader, probe_val_loader, train_loader, val_loader,
                                *, probe_epochs: int, probe_lr: float, epochs: int, lr: float,
                                device: torch.device | None = None, cache_name: str | None = None, fingerprint: str = "",
                                seed: int = 0, probe_steps: int | None = None, progress: bool = False) -> StrategyRun:
    """LP-FT (Kumar et al., 2022): train the head on frozen features, then fine-tune everything.

    A randomly initialised head sends large, noisy gradients into the body at the
    start of full fine-tuning and distorts the pre-trained features; starting from a
    trained head avoids that.

    Args:
        model: A CNN with ``features`` and a target-sized head.
        probe_train_loader, probe_val_loader: Fixed-order loaders for the cached features.
        train_loader, val_loader: Loaders for fine-tuning (the training one may shuffle).
        probe_epochs, probe_lr: Linear-probe stage (see :func:`feature_extraction`).
        epochs, lr: Full fine-tuning stage (usually a lower rate than plain fine-tuning).
        device, cache_name, fingerprint, seed, progress: As for :func:`feature_extraction`.
        probe_steps: A step budget for the probe (``steps`` of :func:`feature_extraction`).
    """
    start = time.perf_counter()
    probe = feature_extraction(model, probe_train_loader, probe_val_loader, epochs=probe_epochs, lr=probe_lr,
                               device=device, cache_name=cache_name, fingerprint=fingerprint, seed=seed,
                               steps=probe_steps, progress=progress)
    tune = full_fine_tuning(model, train_loader, val_loader, epochs=epochs, lr=lr, device=device, seed=seed,
                            progress=progress)
    return StrategyRun("LP-FT", probe.stages + [("then all layers", tune.stages[0][1])],
                       max(probe.trainable_params, tune.trainable_params), time.perf_counter() - start)


def _convolution_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                                _transposed, _output_padding, _groups, output_mask, out_shape=None) -> int:
    """FLOPs of a convolution's backward pass, grouped (depthwise) convolutions included.

    Each of the two gradients (input, weight) costs what the forward pass costs:
    2 x output elements x (input channels per group x kernel size). torch's default formula ignores
    ``groups`` and so overcounts a depthwise convolution's backward by its channel count.
    """
    forward = 2 * int(np.prod(grad_out_shape)) * int(np.prod(w_shape[1:]))
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False,
                           custom_mapping={torch.ops.aten.convolution_backward: _convolution_backward_flops})


def training_step_flops(model: nn.Module, inputs: torch.Tensor | dict, targets: torch.Tensor) -> int:
    """Floating-point operations of one training step (forward, cross-entropy, backward).

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` (its convolution-backward formula
    corrected for grouped convolutions) with the model's current
    ``requires_grad`` flags, so a frozen body shows up as a shorter backward pass. Unlike
    seconds, the count does not depend on the machine or on what else runs on it.

    Args:
        model: The network, with the parameters to train marked ``requires_grad``.
        inputs, targets: One batch; ``inputs`` a tensor, or a dict of keyword arguments (a tokenised text batch).

    Returns:
        The FLOPs of the step (the model's gradients are cleared again afterwards).
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("no parameter of the model requires a gradient: mark what the step trains first")
    model.zero_grad(set_to_none=True)
    with _flop_counter() as counter:
        logits = model(**inputs) if isinstance(inputs, dict) else model(inputs)
        nn.functional.cross_entropy(logits, targets).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def strategy_step_flops(make_model, inputs: torch.Tensor, targets: torch.Tensor, partial_blocks: int) -> dict:
    """Training FLOPs per step of feature extraction, partial and full fine-tuning, on one batch.

    Feature extraction trains the head on cached body features, so its step is the head alone on
    the pooled features; partial fine-tuning runs the whole forward pass but back-propagates through
    the top ``partial_blocks`` blocks only; full fine-tuning back-propagates through everything.

    Args:
        make_model: ``make_model()`` -> a fresh pre-trained model with its target head.
        inputs, targets: One training batch.
        partial_blocks: Blocks trained by partial fine-tuning.

    Returns:
        ``{"feature extraction": flops, f"partial (last {k} blocks)": flops, "full fine-tuning": flops}``.
    """
    model = make_model()
    with torch.no_grad():
        features = pooled_body(model)(inputs)
    head = getattr(model, head_name(model))
    counts = {"feature extraction": training_step_flops(head, features, targets)}
    counts[f"partial (last {partial_blocks} blocks)"] = training_step_flops(
        freeze_body_except_last(make_model(), partial_blocks), inputs, targets)
    counts["full fine-tuning"] = training_step_flops(unfreeze(make_model()), inputs, targets)
    return counts


def forward_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """Floating-point operations of one forward pass without gradients (e.g. caching features)."""
    with torch.no_grad(), _flop_counter() as counter:
        model(inputs)
    return int(counter.get_total_flops())
