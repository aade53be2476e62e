"""Notebook 01 (fundamentals), section 7: one digit task, six set-ups, as arms of the comparison protocol.

Every arm follows :mod:`tlutils.core.compare`: it draws its labelled examples with the trial's
seed, makes its one choice (a probe's ``C``, the fine-tuning epoch) on a validation split, and
never sees the test split, which :func:`~tlutils.core.compare.compare` scores once per seed
through the arm's predictor (a function from target indices to accuracy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tlutils.core.compare import Outcome, Trial, best_on_validation
from tlutils.core.datasets import ArrayImageDataset, balanced_subset
from tlutils.core.features import fit_linear_probe, standardize
from tlutils.core.surgery import trainable_parameter_count
from tlutils.core.train import evaluate, fit

#: The six set-ups, in the order of the notebook's table.
SETUPS = ("feature extraction", "fine-tuning", "DA 1: source only (MNIST as is)",
          "DA 2: source only (MNIST drawn like UCI)", "DA 3: + feature-statistics alignment",
          "DA 4: + 10 target labels per class")


@dataclass
class DigitTask:
    """The cached inputs of section 7: frozen features of every target digit and of the source pool.

    Args:
        features: Frozen-body features of every UCI digit, ``N x D``.
        images: The UCI digit images (for fine-tuning), ``N x H x W``.
        labels: Their labels, ``N``.
        pool: Indices of the training part: labelled draws come from it, the rest is unlabelled.
        val: Indices of the validation split (choices of the arms that use target labels).
        source: ``{"raw": ..., "rendered": ...}`` features of the labelled MNIST source pool.
        source_labels: Labels of the source pool.
        source_val: The same two renderings for MNIST validation digits (choices of source-only arms).
        source_val_labels: Their labels.
        labels_per_class: Labelled target digits per class in one draw.
        source_per_class: Source digits per class in one draw from the pool.
    """

    features: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    pool: np.ndarray
    val: np.ndarray
    source: dict
    source_labels: np.ndarray
    source_val: dict
    source_val_labels: np.ndarray
    labels_per_class: int = 10
    source_per_class: int = 100

    def labelled(self, seed: int) -> np.ndarray:
        """Indices of the labelled target digits drawn with ``seed`` (balanced, from the pool)."""
        return self.pool[balanced_subset(self.labels[self.pool], self.labels_per_class, seed=seed)]

    def source_rows(self, seed: int) -> np.ndarray:
        """Rows of the source pool drawn with ``seed`` (balanced)."""
        return balanced_subset(self.source_labels, self.source_per_class, seed=seed)


def _probe_scorer(task: DigitTask, probe, reference: np.ndarray) -> Callable[[np.ndarray], float]:
    """Accuracy on any target indices, standardised with ``reference``'s statistics."""
    return lambda index: float(probe.score(standardize(task.features[index], reference), task.labels[index]))


def _choose_c(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
              cs: Sequence[float]) -> Outcome:
    """Fit one probe per ``C`` and keep the best on the given validation features (already standardised)."""
    def run(c: float) -> Outcome:
        probe = fit_linear_probe(train_x, train_y, C=c)
        return Outcome(probe, val=float(probe.score(val_x, val_y)), steps=0,
                       trainable_params=int(probe.coef_.size + probe.intercept_.size))
    return best_on_validation(list(cs), run, name="C")


def feature_extraction_arm(task: DigitTask, cs: Sequence[float]) -> Callable[[Trial], Outcome]:
    """A linear head on the frozen features of the labelled target digits; ``C`` chosen on target validation."""
    def arm(trial: Trial) -> Outcome:
        labelled = task.labelled(trial.seed)
        reference = task.features[labelled]
        chosen = _choose_c(standardize(reference), task.labels[labelled],
                           standardize(task.features[task.val], reference), task.labels[task.val], cs)
        chosen.predictor = _probe_scorer(task, chosen.predictor, reference)
        return chosen
    return arm


def source_only_arm(task: DigitTask, rendering: str, align: bool, cs: Sequence[float]) -> Callable[[Trial], Outcome]:
    """A head trained on source digits only; ``C`` chosen on *source* validation (no target label is used).

    Args:
        task: The cached inputs.
        rendering: ``"raw"`` (MNIST as it is) or ``"rendered"`` (MNIST drawn like the target).
        align: Standardise target features with the unlabelled target pool's own statistics
            (feature-statistics alignment) instead of the source's.
        cs: The ``C`` values to try.
    """
    def arm(trial: Trial) -> Outcome:
        rows = task.source_rows(trial.seed)
        source = task.source[rendering][rows]
        chosen = _choose_c(standardize(source), task.source_labels[rows],
                           standardize(task.source_val[rendering], source), task.source_val_labels, cs)
        reference = task.features[task.pool] if align else source
        chosen.predictor = _probe_scorer(task, chosen.predictor, reference)
        chosen.val = chosen.predictor(task.val)  # reported, not used for the choice
        return chosen
    return arm


def source_plus_target_arm(task: DigitTask, cs: Sequence[float]) -> Callable[[Trial], Outcome]:
    """One head on source digits (drawn like the target) plus the labelled target digits; ``C`` on target validation."""
    def arm(trial: Trial) -> Outcome:
        rows, labelled = task.source_rows(trial.seed), task.labelled(trial.seed)
        source, pool = task.source["rendered"][rows], task.features[task.pool]
        train_x = np.vstack([standardize(source), standardize(task.features[labelled], pool)])
        train_y = np.concatenate([task.source_labels[rows], task.labels[labelled]])
        chosen = _choose_c(train_x, train_y, standardize(task.features[task.val], pool), task.labels[task.val], cs)
        chosen.predictor = _probe_scorer(task, chosen.predictor, pool)
        return chosen
    return arm


def fine_tuning_arm(task: DigitTask, make_model: Callable[[], nn.Module], transform: Callable, *, batch_size: int,
                    lr: float, device: torch.device) -> Callable[[Trial], Outcome]:
    """Fine-tune body and head on the labelled target images; the epoch is chosen on target validation.

    Trains for as many epochs as the trial's step budget allows and keeps the weights of the epoch
    with the best validation accuracy (``fit`` restores them).
    """
    def loader(index: np.ndarray) -> DataLoader:
        return DataLoader(ArrayImageDataset(task.images[index], task.labels[index], transform), batch_size=256)

    def arm(trial: Trial) -> Outcome:
        labelled = task.labelled(trial.seed)
        model = make_model()
        train = trial.loader(ArrayImageDataset(task.images[labelled], task.labels[labelled], transform), batch_size)
        epochs = trial.epochs_for(train)
        history = fit(model, train, loader(task.val), epochs=epochs, lr=lr, device=device, seed=trial.seed,
                      monitor="val_accuracy", progress=False)
        best_epoch = int(np.argmax(history["val_accuracy"])) + 1
        return Outcome(lambda index: float(evaluate(model, loader(index), device)["accuracy"]),
                       val=float(max(history["val_accuracy"])), steps=epochs * len(train),
                       trainable_params=trainable_parameter_count(model), choice={"epoch": best_epoch})
    return arm


def digit_arms(task: DigitTask, make_model: Callable[[], nn.Module], transform: Callable, *, cs: Sequence[float],
               batch_size: int, lr: float, device: torch.device) -> dict[str, Callable[[Trial], Outcome]]:
    """The six set-ups of section 7 as protocol arms, keyed by the names in :data:`SETUPS`."""
    arms = [feature_extraction_arm(task, cs),
            fine_tuning_arm(task, make_model, transform, batch_size=batch_size, lr=lr, device=device),
            source_only_arm(task, "raw", align=False, cs=cs), source_only_arm(task, "rendered", align=False, cs=cs),
            source_only_arm(task, "rendered", align=True, cs=cs), source_plus_target_arm(task, cs)]
    return dict(zip(SETUPS, arms))
