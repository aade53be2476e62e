"""One training loop for classifiers over images, text and audio.

Batches are either ``(inputs, targets)`` pairs or Hugging Face style dicts with
a ``labels`` entry; models return logits or an output object with ``.logits``.
:func:`fit` returns a :class:`History` that prints as a table and plots itself.

Example:
    >>> history = fit(model, train_loader, val_loader, epochs=3, lr=1e-3)
    >>> history.plot()
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from tlutils.io import atomic_file
from tlutils.metrics import METRICS
from tlutils.surgery import set_train_mode
from tlutils.utils import get_device, set_seed


@dataclass
class History:
    """Per-epoch records of a training run: loss, metrics, learning rate, seconds."""

    epochs: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    best_epoch: int | None = None

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
        from tlutils.plots import plot_history

        return plot_history(self, metrics=metrics, title=title)


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


def _logits(model: nn.Module, inputs) -> torch.Tensor:
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return getattr(out, "logits", out)


def _check_targets(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if targets.dtype in (torch.int64, torch.int32) and targets.numel() and int(targets.max()) >= logits.shape[-1]:
        raise ValueError(f"a target label is {int(targets.max())} but the model outputs {logits.shape[-1]} classes; "
                         "call replace_head(model, num_classes=<number of classes>) first")


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` over ``loader`` in eval mode.

    Returns:
        ``(logits, targets)`` concatenated over all batches, on the CPU.
    """
    device = device or get_device()
    model.eval().to(device)
    all_logits, all_targets = [], []
    for batch in loader:
        inputs, targets = unpack_batch(batch, device)
        all_logits.append(_logits(model, inputs).float().cpu())
        all_targets.append(targets.cpu())
    if not all_logits:
        raise ValueError("the evaluation loader is empty: it yielded no batches")
    return torch.cat(all_logits), torch.cat(all_targets)


def evaluate(model: nn.Module, loader, device: torch.device | None = None,
             loss_fn: Callable | None = None, metrics: Sequence[str] = ("accuracy",)) -> dict:
    """Loss and metrics of ``model`` on ``loader``, for example ``{"loss": 0.41, "accuracy": 0.87}``."""
    logits, targets = predict(model, loader, device)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    result = {"loss": float(loss_fn(logits, targets))}
    predictions = logits.argmax(-1).numpy()
    for name in metrics:
        result[name] = METRICS[name](targets.numpy(), predictions)
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


def _train_one_epoch(model, loader, optimizer, scheduler, loss_fn, device, max_grad_norm, bar) -> float:
    set_train_mode(model)
    total, count = 0.0, 0
    for batch in loader:
        inputs, targets = unpack_batch(batch, device)
        logits = _logits(model, inputs)
        _check_targets(logits, targets)
        loss = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(targets)
        count += len(targets)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return total / count


def _improved(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value < best if monitor.endswith("loss") else value > best


def fit(model: nn.Module, train_loader, val_loader=None, *, epochs: int = 3, lr: float = 1e-3,
        optimizer: torch.optim.Optimizer | None = None, scheduler: str | Callable | None = None,
        loss_fn: Callable | None = None, device: torch.device | None = None,
        metrics: Sequence[str] = ("accuracy",), max_grad_norm: float | None = None,
        patience: int | None = None, monitor: str = "val_loss", restore_best: bool = True,
        weight_decay: float = 0.0, seed: int | None = None, progress: bool = True) -> History:
    """Train a classifier and record a :class:`History`.

    Args:
        model: Returns logits (or an object with ``.logits``).
        train_loader: Yields ``(inputs, targets)`` or dicts with ``labels``.
        val_loader: Optional; evaluated after every epoch. Its metrics expect ``N x C``
            class logits; for span, sequence or mask outputs leave it out and score the
            model with the task's own function (e.g. :func:`tlutils.nlp.qa_scores`).
        epochs: Number of passes over ``train_loader``.
        lr: Learning rate of the default AdamW optimizer (ignored if ``optimizer`` is given).
        optimizer: A ready optimizer, e.g. over :func:`~tlutils.surgery.layerwise_param_groups`.
        scheduler: Per-step schedule, see :func:`make_scheduler`.
        loss_fn: Defaults to cross-entropy.
        device: Defaults to :func:`~tlutils.utils.get_device`.
        metrics: Names from :data:`tlutils.metrics.METRICS` computed on validation data.
        max_grad_norm: Clip the gradient norm to this value.
        patience: Stop after this many epochs without improvement of ``monitor``.
        monitor: ``"val_loss"`` or ``"val_<metric>"``.
        restore_best: With a validation set, end with the weights of the best epoch.
        weight_decay: AdamW weight decay of the default optimizer.
        seed: If given, :func:`~tlutils.utils.set_seed` is called first.
        progress: Show a tqdm progress bar.

    Returns:
        The run's :class:`History`.
    """
    from tqdm.auto import tqdm

    if seed is not None:
        set_seed(seed)
    steps = len(train_loader)
    if steps == 0:
        raise ValueError("train_loader is empty: check the data set and batch size (drop_last with a tiny set?)")
    device = device or get_device()
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimizer is None and not trainable:
        raise ValueError("every parameter is frozen: unfreeze at least the head before training")
    optimizer = optimizer or torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    scheduler = make_scheduler(optimizer, scheduler, epochs * steps)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    history, best, best_state, waited = History(), None, None, 0
    with tqdm(total=epochs * steps, desc="training", disable=not progress, leave=False) as bar:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            row["train_loss"] = _train_one_epoch(model, train_loader, optimizer, scheduler,
                                                 loss_fn, device, max_grad_norm, bar)
            if val_loader is not None:
                scores = evaluate(model, val_loader, device, loss_fn, metrics)
                row.update({f"val_{k}": v for k, v in scores.items()})
            row["seconds"] = time.perf_counter() - start
            history.epochs.append(row)
            if val_loader is None:
                continue
            if _improved(row[monitor], best, monitor):
                best, waited, history.best_epoch = row[monitor], 0, epoch
                best_state = copy.deepcopy(model.state_dict()) if restore_best else None
            else:
                waited += 1
                if patience is not None and waited >= patience:
                    history.stopped_early = True
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
