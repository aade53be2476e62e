"""The one training loop, for every objective of the course, and the one evaluation loop.

:func:`fit` owns the progress bar, the learning-rate schedule, gradient clipping,
early stopping on a validation score, the stop on a non-finite loss, the step budget
and the :class:`History`. What one optimisation step computes is a *step function*
``step(model, batch, device) -> Loss``: the default, :func:`classification_step`, is
cross-entropy on ``(inputs, targets)`` batches or Hugging Face style dicts with a
``labels`` entry. A detector, the joint ``L_source + lambda * L_target`` objective or a
domain-adversarial loss is a step function of a few lines passed as ``fit(..., step=...)``.

:func:`map_batches` is the one evaluation loop: :func:`predict`, feature extraction and
the task-specific scorers run through it.

Example:
    >>> history = fit(model, train_loader, val_loader, epochs=3, lr=1e-3)
    >>> history.plot()
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from tlutils.core.io import atomic_file
from tlutils.core.metrics import METRICS
from tlutils.core.runtime import check_one_of, resolve_device, seeded
from tlutils.core.surgery import set_train_mode


@dataclass
class History:
    """Per-epoch records of a training run: loss (and its named parts), metrics, learning rate, seconds.

    ``steps`` counts the optimizer steps of the whole run; ``best_epoch`` is the epoch whose
    weights were kept (with a validation set and ``restore_best``).
    """

    epochs: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    best_epoch: int | None = None
    steps: int = 0

    def __getitem__(self, key: str) -> list:
        return [row.get(key) for row in self.epochs]

    def __len__(self) -> int:
        return len(self.epochs)

    @property
    def train_loss(self) -> list[float]:
        """Mean training loss of every epoch."""
        return self["train_loss"]

    @property
    def val_loss(self) -> list[float]:
        """Validation loss of every epoch (``None`` entries without a validation set)."""
        return self["val_loss"]

    @property
    def seconds(self) -> float:
        """Total training time in seconds."""
        return float(sum(self["seconds"]))

    def last(self, key: str):
        """Value of ``key`` in the final epoch."""
        return self.epochs[-1][key]

    def to_frame(self):
        """The history as a pandas DataFrame, one row per epoch."""
        import pandas as pd

        return pd.DataFrame(self.epochs).set_index("epoch")

    def _repr_html_(self) -> str:
        return self.to_frame().to_html(float_format=lambda v: f"{v:.4g}")

    def plot(self, metrics: Sequence[str] | None = None, title: str | None = None):
        """Plot loss and metric curves per epoch; returns the figure."""
        from tlutils.core.plots import plot_history

        return plot_history(self, metrics=metrics, title=title)


class Loss(NamedTuple):
    """What a step function returns.

    Attributes:
        total: The scalar to minimise (``backward()`` is called on it).
        parts: Named parts to log per epoch, e.g. ``{"task": 0.41, "penalty": 0.02}`` (floats).
        size: Examples in the batch; epoch means are weighted by it (1 = plain mean over batches).
    """

    total: torch.Tensor
    parts: Mapping[str, float] = {}
    size: int = 1


#: ``step(model, batch, device) -> Loss``: one optimisation step's loss, see :func:`fit`.
Step = Callable[[nn.Module, Any, torch.device], Loss]


def unpack_batch(batch, device: torch.device) -> tuple[dict | torch.Tensor, torch.Tensor]:
    """Split a batch into model inputs and targets, moved to ``device``."""
    if isinstance(batch, dict):
        if "labels" not in batch:
            raise ValueError("a dict batch needs a 'labels' entry with the class indices")
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        return inputs, batch["labels"].to(device)
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0].to(device), batch[1].to(device)
    raise ValueError("each batch must be (inputs, targets) or a dict with 'labels'; "
                     f"got {type(batch).__name__}")


def call_model(model: Callable, inputs) -> torch.Tensor:
    """``model(**inputs)`` for dict inputs, else ``model(inputs)``; an output's ``.logits`` if it has one."""
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return getattr(out, "logits", out)


#: Targets with this value are ignored by cross-entropy (padding, unlabelled tokens) and by :func:`evaluate`.
IGNORE_INDEX = -100


def _check_targets(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Class-index targets must be integers in ``[0, classes)`` (or ``IGNORE_INDEX``); soft targets match the logits."""
    if targets.is_floating_point():
        if targets.shape != logits.shape and logits.dim() == targets.dim() + 1 and logits.shape[-1] > 1:
            raise ValueError(f"the targets are {targets.dtype} numbers such as {targets.flatten()[0].item()!r}, but "
                             "cross-entropy needs integer class indices: build the data set from integer labels "
                             "(labels.long() if they are whole numbers); float targets must be class probabilities "
                             f"of the logits' shape {tuple(logits.shape)}")
        return
    if targets.dtype not in (torch.int64, torch.int32) or not targets.numel():
        return
    if int(targets.max()) >= logits.shape[-1]:
        raise ValueError(f"a target label is {int(targets.max())} but the model outputs {logits.shape[-1]} classes; "
                         "call replace_head(model, num_classes=<number of classes>) first")
    low = int(targets.min())
    if low < 0 and bool(((targets < 0) & (targets != IGNORE_INDEX)).any()):
        raise ValueError(f"a target label is {int(targets[(targets < 0) & (targets != IGNORE_INDEX)][0])}; class "
                         f"labels run from 0 to {logits.shape[-1] - 1} ({IGNORE_INDEX} marks an ignored example): "
                         "remap the classes to start at 0")


def classification_step(loss_fn: Callable | None = None) -> Step:
    """The default step of :func:`fit`: ``loss_fn(model(inputs), targets)``, cross-entropy unless given.

    Example:
        >>> history = fit(model, loader, step=classification_step(nn.CrossEntropyLoss(label_smoothing=0.1)))
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()

    def step(model: nn.Module, batch, device: torch.device) -> Loss:
        inputs, targets = unpack_batch(batch, device)
        logits = call_model(model, inputs)
        _check_targets(logits, targets)
        return Loss(loss_fn(logits, targets), {}, len(targets))

    return step


@torch.no_grad()
def map_batches(function: Callable, loader, device: torch.device | None = None, *, progress: bool = False,
                desc: str = "evaluating") -> list:
    """The one evaluation loop: ``function(inputs, targets)`` on every batch, without gradients.

    Batches are unpacked and moved to ``device`` by :func:`unpack_batch`. The caller
    puts its model in eval mode first.

    Returns:
        The list of ``function``'s results, one per batch.

    Raises:
        ValueError: the loader yielded no batches.
    """
    from tqdm.auto import tqdm

    device = resolve_device(device)
    # Without a bar the loader is iterated directly: a DataLoader draws its shuffle seed from the global
    # generator each time it is iterated, and wrapping it in tqdm would draw once more.
    batches = tqdm(loader, desc=desc, leave=False) if progress else loader
    results = [function(*unpack_batch(batch, device)) for batch in batches]
    if not results:
        raise ValueError("the loader is empty: it yielded no batches (check the data set and the batch size)")
    return results


def predict(model: nn.Module, loader, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` over ``loader`` in eval mode.

    Returns:
        ``(logits, targets)`` concatenated over all batches, on the CPU.
    """
    device = resolve_device(device)
    model.eval().to(device)
    pairs = map_batches(lambda inputs, targets: (call_model(model, inputs).float().cpu(), targets.cpu()),
                        loader, device)
    return torch.cat([logits for logits, _ in pairs]), torch.cat([targets for _, targets in pairs])


def evaluate(model: nn.Module, loader, device: torch.device | None = None,
             loss_fn: Callable | None = None, metrics: Sequence[str] = ("accuracy",)) -> dict:
    """Loss and metrics of ``model`` on ``loader``, for example ``{"loss": 0.41, "accuracy": 0.87}``.

    Raises:
        FloatingPointError: the model output NaN or infinite logits (a diverged model is
            not scored: its accuracy would be meaningless).
    """
    _check_metric_names(metrics)
    logits, targets = predict(model, loader, device)
    bad = int((~torch.isfinite(logits)).any(dim=-1).sum())
    if bad:
        raise FloatingPointError(f"the model output NaN or infinite logits for {bad} of {len(logits)} examples; "
                                 "it has diverged (lower the learning rate) or its inputs hold NaN values")
    _check_targets(logits, targets)
    scored = targets != IGNORE_INDEX if not targets.is_floating_point() else torch.ones(len(targets), dtype=torch.bool)
    if not bool(scored.any()):
        raise ValueError(f"every target of the loader is {IGNORE_INDEX} (ignored), so there is nothing to score; "
                         "check that the evaluation data carries its labels")
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    result = {"loss": float(loss_fn(logits, targets))}
    # Ignored examples count neither as right nor as wrong.
    predictions = logits.argmax(-1)[scored].numpy()
    for name in metrics:
        result[name] = METRICS[name](targets[scored].numpy(), predictions)
    return result


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str | Callable | None, total_steps: int):
    """A per-step learning-rate schedule: ``None``, ``"cosine"``, ``"onecycle"``, ``"linear"`` or a factory.

    A factory is called as ``kind(optimizer, total_steps)``.
    """
    if kind is None:
        return None
    if callable(kind):
        return kind(optimizer, total_steps)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if kind == "onecycle":
        max_lrs = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=max(total_steps, 1))
    if kind == "linear":
        return torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=max(total_steps, 1))
    raise ValueError(f"unknown scheduler {kind!r}; use None, 'cosine', 'onecycle', 'linear' or a callable")


DIVERGED = ("the training loss became {value} at epoch {epoch}, step {step}. Likely causes: a learning rate "
            "too high for this model (try lr / 10), NaN or infinite values in the inputs, or a batch whose "
            "labels are all ignored (-100), which gives a 0/0 mean.")


@dataclass
class _Run:
    """The state one :func:`fit` call carries between its epochs."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step: Step
    device: torch.device
    max_grad_norm: float | None
    max_steps: int
    bar: Any
    steps: int = 0


def _train_one_epoch(run: _Run, loader, epoch: int) -> dict[str, float]:
    """One pass (or the rest of the step budget); returns the size-weighted mean loss and parts."""
    set_train_mode(run.model)
    sums: dict[str, float] = {}
    count = 0
    for batch in loader:
        if run.steps >= run.max_steps:
            break
        loss = run.step(run.model, batch, run.device)
        value = loss.total.item()
        if not math.isfinite(value):
            raise FloatingPointError(DIVERGED.format(value=value, epoch=epoch, step=run.steps + 1))
        run.optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        if run.max_grad_norm is not None:
            nn.utils.clip_grad_norm_([p for p in run.model.parameters() if p.requires_grad], run.max_grad_norm)
        run.optimizer.step()
        if run.scheduler is not None:
            run.scheduler.step()
        run.steps += 1
        for name, part in {"train_loss": value, **loss.parts}.items():
            sums[name] = sums.get(name, 0.0) + float(part) * loss.size
        count += loss.size
        run.bar.update(1)
        run.bar.set_postfix(loss=f"{value:.3f}")
    _check_finite_weights(run.model, epoch, run.steps)
    return {name: total / max(count, 1) for name, total in sums.items()}


def _check_finite_weights(model: nn.Module, epoch: int, step: int) -> None:
    """The last step of an epoch can turn the weights to NaN while its loss was still finite."""
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and not bool(torch.isfinite(parameter).all()):
            raise FloatingPointError(f"the weights of {name} became NaN or infinite by epoch {epoch}, step {step}. "
                                     + DIVERGED.split(". ", 1)[1])


def _improved(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value < best if monitor.endswith("loss") else value > best


def _check_metric_names(metrics: Sequence[str]) -> None:
    for name in metrics:
        check_one_of(name, tuple(METRICS), "metric")


def _check_fit_arguments(optimizer, lr, weight_decay, step, loss_fn, val_loader, validate, metrics, monitor,
                         patience, epochs, max_steps) -> None:
    """Every argument mistake :func:`fit` can see before the first epoch, with its fix."""
    if optimizer is not None and (lr is not None or weight_decay is not None):
        raise ValueError("pass either optimizer= or lr=/weight_decay= (they configure the default AdamW), not both: "
                         "set the rates inside your optimizer's parameter groups")
    if step is not None and loss_fn is not None:
        raise ValueError("loss_fn configures the default step; with step= put the loss inside your step function "
                         "(or pass step=classification_step(loss_fn))")
    if val_loader is not None and validate is not None:
        raise ValueError("pass either val_loader= (scored with evaluate) or validate= (your own scorer), not both")
    if epochs < 1 or (max_steps is not None and max_steps < 1):
        raise ValueError(f"epochs and max_steps must be positive, got epochs={epochs}, max_steps={max_steps}")
    _check_metric_names(metrics)
    if val_loader is None and validate is None:
        if patience is not None:
            raise ValueError("early stopping (patience=) needs a validation set: pass val_loader= or validate=")
        return
    if val_loader is not None and monitor is not None:
        check_one_of(monitor, ("val_loss", *(f"val_{name}" for name in metrics)), "monitor")


def fit(model: nn.Module, train_loader, val_loader=None, *, epochs: int = 3, max_steps: int | None = None,
        lr: float | None = None, weight_decay: float | None = None, optimizer: torch.optim.Optimizer | None = None,
        scheduler: str | Callable | None = None, step: Step | None = None, loss_fn: Callable | None = None,
        validate: Callable[[nn.Module, torch.device], dict] | None = None, device: torch.device | None = None,
        metrics: Sequence[str] = ("accuracy",), max_grad_norm: float | None = None, patience: int | None = None,
        monitor: str | None = "val_loss", restore_best: bool = True, seed: int | None = None,
        progress: bool = True, desc: str = "training") -> History:
    """Train a model and record a :class:`History`: the one training loop of the course.

    Args:
        model: The network; with the default step it returns logits (or an object with ``.logits``).
        train_loader: Any re-iterable with ``len()``: a DataLoader of ``(inputs, targets)`` or dicts
            with ``labels`` for the default step, or whatever batches ``step`` understands.
        val_loader: Optional; scored with :func:`evaluate` after every epoch. Its metrics expect
            ``N x C`` class logits; for other outputs pass ``validate`` instead.
        epochs: Passes over ``train_loader``.
        max_steps: Stop after this many optimizer steps (an explicit budget); the schedule spans
            ``min(epochs * len(train_loader), max_steps)`` steps.
        lr: Learning rate of the default AdamW optimizer (default ``1e-3``).
        weight_decay: AdamW weight decay of the default optimizer (default 0).
        optimizer: A ready optimizer, e.g. over :func:`~tlutils.core.surgery.layerwise_param_groups`;
            it cannot be combined with ``lr`` or ``weight_decay``.
        scheduler: Per-step schedule, see :func:`make_scheduler`.
        step: ``step(model, batch, device) -> Loss``; default :func:`classification_step`.
        loss_fn: The default step's loss (cross-entropy when ``None``); also the validation loss.
        validate: ``validate(model, device) -> {"name": value}`` instead of ``val_loader``; the
            values are logged as ``val_<name>``.
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.
        metrics: Names from :data:`tlutils.core.metrics.METRICS` computed on ``val_loader``.
        max_grad_norm: Clip the gradient norm to this value.
        patience: Stop after this many epochs without improvement of ``monitor``.
        monitor: ``"val_loss"`` or ``"val_<metric>"`` (lower is better for names ending in ``loss``);
            ``None`` keeps no best epoch.
        restore_best: With validation and a monitor, end with the weights of the best epoch.
        seed: Seeds the run inside :func:`~tlutils.core.runtime.seeded`: the same seed gives the
            same run, and the caller's random state is left as it was.
        progress: Show a tqdm progress bar.
        desc: The progress bar's label.

    Returns:
        The run's :class:`History`.

    Raises:
        ValueError: an argument mistake, found before the first epoch.
        FloatingPointError: the training loss became NaN or infinite (the message names the likely
            causes); with a validation set, the best weights so far are restored first.
    """
    _check_fit_arguments(optimizer, lr, weight_decay, step, loss_fn, val_loader, validate, metrics, monitor,
                         patience, epochs, max_steps)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("train_loader is empty: check the data set and batch size (drop_last with a tiny set?)")
    device = resolve_device(device)
    model.to(device)
    if optimizer is None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("every parameter is frozen: unfreeze at least the head before training")
        optimizer = torch.optim.AdamW(trainable, lr=1e-3 if lr is None else lr,
                                      weight_decay=0.0 if weight_decay is None else weight_decay)
    total_steps = min(epochs * steps_per_epoch, max_steps or epochs * steps_per_epoch)
    with seeded(seed):
        return _fit_epochs(model, train_loader, val_loader, validate, optimizer,
                           make_scheduler(optimizer, scheduler, total_steps), step or classification_step(loss_fn),
                           loss_fn, device, metrics, max_grad_norm, patience, monitor, restore_best, epochs,
                           total_steps, progress, desc)


def _fit_epochs(model, train_loader, val_loader, validate, optimizer, scheduler, step, loss_fn, device, metrics,
                max_grad_norm, patience, monitor, restore_best, epochs, total_steps, progress, desc) -> History:
    from tqdm.auto import tqdm

    history, best, best_state, waited = History(), None, None, 0
    with tqdm(total=total_steps, desc=desc, disable=not progress, leave=False) as bar:
        run = _Run(model, optimizer, scheduler, step, device, max_grad_norm, total_steps, bar)
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
                train_loader.sampler.set_epoch(epoch)   # a DistributedSampler reshuffles per epoch
            try:
                row.update(_train_one_epoch(run, train_loader, epoch))
            except FloatingPointError:
                if best_state is not None:
                    model.load_state_dict(best_state)
                raise
            history.steps = row["steps"] = run.steps
            if val_loader is not None:
                scores = evaluate(model, val_loader, device, loss_fn, metrics)
                row.update({f"val_{k}": v for k, v in scores.items()})
            elif validate is not None:
                row.update({f"val_{k}": v for k, v in validate(model, device).items()})
            row["seconds"] = time.perf_counter() - start
            history.epochs.append(row)
            if (val_loader is None and validate is None) or monitor is None:
                if run.steps >= total_steps:
                    break
                continue
            if monitor not in row:
                raise ValueError(f"monitor {monitor!r} is not among the validation scores "
                                 f"{sorted(k for k in row if k.startswith('val_'))}")
            if not math.isfinite(row[monitor]):
                if best_state is not None:
                    model.load_state_dict(best_state)
                raise FloatingPointError(f"the validation score {monitor} is {row[monitor]} at epoch {epoch}, so no "
                                         "epoch can be chosen on it; check the validation data and your validate= "
                                         "function (every label ignored? a division by zero?)")
            if _improved(row[monitor], best, monitor):
                best, waited, history.best_epoch = row[monitor], 0, epoch
                best_state = copy.deepcopy(model.state_dict()) if restore_best else None
            else:
                waited += 1
                if patience is not None and waited >= patience:
                    history.stopped_early = True
                    break
            if run.steps >= total_steps:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict | None = None) -> Path:
    """Save the model's weights as safetensors, atomically, with optional JSON metadata.

    Tied or shared tensors are stored once (``safetensors.torch.save_model``).
    """
    from safetensors.torch import save_model

    path = Path(path)
    with atomic_file(path) as tmp:
        save_model(model, str(tmp), metadata={"tlutils": json.dumps(metadata or {})})
    return path


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Load weights saved by :func:`save_checkpoint` into ``model``; returns the metadata.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a valid safetensors checkpoint, or does not fit ``model``.
    """
    from safetensors import safe_open
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; save one with save_checkpoint(model, path)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {}).get("tlutils", "{}"))
    except Exception as error:  # safetensors raises several types for a damaged file
        raise ValueError(f"{path} is not a readable safetensors checkpoint ({error}); "
                         "it may be truncated: save it again") from error
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit this model (same architecture and head size?): {error}") from error
    if strict and (missing or unexpected):
        raise ValueError(f"{path} does not fit this model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]} (same architecture and head size?)")
    return metadata
