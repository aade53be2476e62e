"""Learning curves: accuracy against labelled examples per class, measured through the comparison protocol.

Every point of a curve is one run of :func:`tlutils.core.compare.compare`: the arms (from scratch,
frozen body + head, fine-tuning) train on the same labelled subset under the same step budget,
over the same seeds, and the protocol scores each held-out split once. :func:`run_learning_curve`
repeats that for every label budget and returns a :class:`LearningCurve`.

Every arm trains with :func:`train_with_checkpoints`: :func:`~tlutils.core.train.fit` with a few
validation checkpoints, which give the weights kept (the best checkpoint on validation) and a
validation curve over steps and seconds (:mod:`tlutils.topics.training_cost` reads time to
accuracy from it).

Example:
    >>> arm = checkpoint_arm(build_probe, subset_picker(pool_features, pool_labels), "features", val_loader,
    ...                      lr=1e-2, batch_size=32, setup_seconds_per_example=extract_seconds_per_image)
    >>> curve = run_learning_curve({"frozen + head": arm, "scratch": scratch}, per_class=[1, 10, 100],
    ...                            seeds=[0, 1, 2], steps=100, loaders=held_out_loaders)
    >>> labels_to_reach(curve, target=0.8)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from tlutils.core.compare import Budget, Comparison, Outcome, Trial, compare
from tlutils.core.runtime import resolve_device
from tlutils.core.surgery import trainable_parameter_count
from tlutils.core.train import evaluate, fit

#: Columns of :attr:`LearningCurve.table`: one row per (approach, labels per class, seed).
CURVE_COLUMNS = ("approach", "per_class", "seed", "val", "steps", "seconds", "trainable_params")


@dataclass
class Fitted:
    """What a learning-curve arm hands to the protocol: the model, how to feed it, and its costs.

    Args:
        model: The trained network.
        kind: Which input representation it reads (a key of the ``loaders`` given to
            :func:`run_learning_curve`, e.g. ``"features"``, ``"pixels"``, ``"tokens"``).
        curve: Validation checkpoints from :func:`train_with_checkpoints`.
        setup_seconds: One-time cost paid before training, e.g. extracting the features of the
            training examples with a frozen body.
    """

    model: nn.Module
    kind: str
    curve: pd.DataFrame
    setup_seconds: float = 0.0


def budget_loader(
    dataset: Dataset, batch_size: int, steps: int, seed: int, collate_fn: Callable | None = None
) -> DataLoader:
    """A loader of exactly ``steps`` batches drawn with replacement: one pass = ``steps`` optimizer steps.

    Drawing with replacement makes the step budget independent of the set size: 10 labelled
    examples and 1,000 get the same number of steps, and no epoch boundary wastes steps. The draws
    depend on the seed and the set's length only, so two arms of the same seed on sets of the
    same size see the same index sequence.

    Args:
        dataset: The labelled training set.
        batch_size: Examples per step.
        steps: Batches per pass over the loader.
        seed: Seeds the sampler's generator; each new pass continues its stream.
        collate_fn: How to stack examples (e.g. ``TextDataset.collate``).

    Returns:
        A :class:`~torch.utils.data.DataLoader` with ``len() == steps``.
    """
    if len(dataset) == 0:
        raise ValueError("the training set is empty: check the label budget and the pool it is drawn from")
    if batch_size < 1 or steps < 1:
        raise ValueError(f"batch_size and steps must be positive, got {batch_size} and {steps}")
    sampler = RandomSampler(
        dataset, replacement=True, num_samples=steps * batch_size, generator=torch.Generator().manual_seed(seed)
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn)


def train_with_checkpoints(
    model: nn.Module,
    dataset: Dataset,
    val_loader,
    *,
    steps: int,
    checkpoints: int,
    batch_size: int,
    lr: float | None = None,
    seed: int,
    weight_decay: float = 0.0,
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    collate_fn: Callable | None = None,
    device: torch.device | str | None = None,
) -> tuple[nn.Module, pd.DataFrame]:
    """Train for ``steps`` optimizer steps with :func:`~tlutils.core.train.fit`, scoring validation ``checkpoints`` times.

    The model ends with the weights of the best checkpoint on validation. The time spent scoring
    validation is measured and left out of ``seconds``: the curve says what training costs.

    Args:
        model: The network (its trainable parameters are trained with AdamW).
        dataset: The labelled training set.
        val_loader: The validation split, scored with :func:`~tlutils.core.train.evaluate`.
        steps: The optimizer step budget; a multiple of ``checkpoints``.
        checkpoints: Validation scores along the way (evenly spaced; the last at ``steps``).
        batch_size: Examples per step.
        lr: Learning rate of the default AdamW (give this or ``optimizer``).
        seed: Seeds batch order, dropout and the run.
        weight_decay: AdamW weight decay (with ``lr`` only).
        optimizer: ``optimizer(model) -> Optimizer``, for rates per parameter group (a new head faster
            than the pre-trained blocks); called on the fresh model of each run.
        collate_fn: How to stack examples.
        device: Defaults to :func:`~tlutils.core.runtime.get_device`.

    Returns:
        ``(model, curve)``; ``curve`` has one row per checkpoint: ``step``, ``seconds`` (training
        time so far, validation excluded) and ``val`` (validation accuracy).
    """
    if checkpoints < 1 or steps % checkpoints:
        raise ValueError(
            f"steps ({steps}) must be a positive multiple of checkpoints ({checkpoints}), "
            f"e.g. steps={checkpoints * max(1, round(steps / max(checkpoints, 1)))}"
        )
    if (lr is None) == (optimizer is None):
        raise ValueError("give exactly one of lr= (the default AdamW) or optimizer= (a function model -> optimizer, "
                         "e.g. lambda m: torch.optim.AdamW(layerwise_param_groups(m, head_lr=1e-2, decay=0.1)))")
    if optimizer is not None and weight_decay:
        raise ValueError("with optimizer=, set the weight decay inside the optimizer's parameter groups")
    device = resolve_device(device)
    loader = budget_loader(dataset, batch_size, steps // checkpoints, seed, collate_fn)
    settings = {"lr": lr, "weight_decay": weight_decay} if optimizer is None else {"optimizer": optimizer(model)}

    def validate(trained: nn.Module, run_device: torch.device) -> dict:
        started = time.perf_counter()
        accuracy = evaluate(trained, val_loader, run_device)["accuracy"]
        return {"accuracy": accuracy, "scoring_seconds": time.perf_counter() - started}

    history = fit(
        model,
        loader,
        validate=validate,
        epochs=checkpoints,
        **settings,
        monitor="val_accuracy",
        device=device,
        seed=seed,
        progress=False,
    )
    train_seconds = np.cumsum([row["seconds"] - row["val_scoring_seconds"] for row in history.epochs])
    curve = pd.DataFrame({"step": history["steps"], "seconds": train_seconds, "val": history["val_accuracy"]})
    return model.eval(), curve


def subset_picker(inputs: torch.Tensor | Dataset, labels: Any) -> Callable[[int, int], Dataset]:
    """``training_set(per_class, seed)``: a seeded, class-balanced subset of a labelled pool.

    Every representation of the same pool (features, pixels, tokens) gives the same examples for
    the same ``(per_class, seed)``, so arms that read different inputs still train on the same data.

    Args:
        inputs: The pool's inputs, a tensor (first dimension = examples) or a Dataset.
        labels: The pool's labels.

    Returns:
        The picker; it returns a ``TensorDataset`` for tensor inputs and a ``Subset`` otherwise.
    """
    from torch.utils.data import Subset, TensorDataset

    from tlutils.core.datasets import balanced_subset

    labels = np.asarray(labels)
    if len(inputs) != len(labels):
        raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels in the pool")

    def training_set(per_class: int, seed: int) -> Dataset:
        chosen = balanced_subset(labels, per_class, seed)
        if isinstance(inputs, torch.Tensor):
            index = torch.from_numpy(chosen)
            return TensorDataset(inputs[index], torch.from_numpy(labels[chosen]).long())
        return Subset(inputs, chosen.tolist())

    return training_set


def checkpoint_arm(
    build: Callable[[], nn.Module],
    training_set: Callable[[int, int], Dataset],
    kind: str,
    val_loader,
    *,
    lr: float | None = None,
    batch_size: int,
    checkpoints: int = 4,
    weight_decay: float = 0.0,
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    setup_seconds_per_example: float = 0.0,
    collate_fn: Callable | None = None,
    device: torch.device | str | None = None,
) -> Callable[[Trial, int], Outcome]:
    """Make a learning-curve arm ``arm(trial, per_class) -> Outcome`` from a model builder and a data picker.

    Args:
        build: Returns a fresh model (called inside the seeded run, so its initialisation depends on the seed).
        training_set: ``training_set(per_class, seed) -> Dataset``: the labelled subset of that size.
        kind: The input representation the model reads (see :class:`Fitted`).
        val_loader: The validation split in that representation.
        lr, batch_size, checkpoints, weight_decay, optimizer, collate_fn: Passed to :func:`train_with_checkpoints`;
            the step budget comes from the trial.
        setup_seconds_per_example: Measured one-time cost per training example (feature extraction
            with a frozen body); counted in :attr:`Fitted.setup_seconds`.
        device: Where to train.

    Returns:
        The arm. Its Outcome's ``val`` is the best checkpoint's validation accuracy and ``choice``
        records that checkpoint's step.
    """

    def arm(trial: Trial, per_class: int) -> Outcome:
        dataset = training_set(per_class, trial.seed)
        model, curve = train_with_checkpoints(
            build(),
            dataset,
            val_loader,
            steps=trial.budget.steps,
            checkpoints=checkpoints,
            batch_size=batch_size,
            lr=lr,
            seed=trial.seed,
            weight_decay=weight_decay,
            optimizer=optimizer,
            collate_fn=collate_fn,
            device=device,
        )
        best = curve.loc[curve["val"].idxmax()]
        fitted = Fitted(model, kind, curve, setup_seconds_per_example * len(dataset))
        return Outcome(
            fitted,
            val=float(best["val"]),
            steps=int(curve["step"].iloc[-1]),
            trainable_params=trainable_parameter_count(model),
            choice={"checkpoint": int(best["step"])},
        )

    return arm


@dataclass
class _Recorder:
    """The protocol's ``score_test``: scores every held-out split of a run and remembers what it saw.

    :func:`compare` calls ``score_test`` exactly once per arm and seed, in the order of its table
    rows, so the n-th record belongs to the n-th row.
    """

    loaders: Mapping[str, Mapping[str, Any]]
    splits: Sequence[str]
    device: torch.device | str | None = None
    scores: list[dict] = field(default_factory=list)
    fitted: list[Fitted] = field(default_factory=list)

    def __call__(self, outcome: Outcome) -> float:
        fitted = outcome.predictor
        if not isinstance(fitted, Fitted):
            raise TypeError(
                f"a learning-curve arm must return Outcome(predictor=Fitted(...)), not "
                f"{type(fitted).__name__}; build arms with checkpoint_arm"
            )
        if fitted.kind not in self.loaders:
            raise KeyError(f"no held-out loaders for input kind {fitted.kind!r}; loaders has {sorted(self.loaders)}")
        scores = {
            split: evaluate(fitted.model, self.loaders[fitted.kind][split], self.device)["accuracy"]
            for split in self.splits
        }
        self.scores.append(scores)
        self.fitted.append(fitted)
        return scores[self.splits[0]]


class LearningCurve:
    """Accuracy against labels per class for several approaches, with one :class:`Comparison` per point.

    Args:
        comparisons: ``{per_class: Comparison}`` (test = the first held-out split).
        scores: ``{per_class: DataFrame}`` of every held-out split, one row per (arm, seed).
        fitted: ``{per_class: {(arm, seed): Fitted}}`` with each run's validation curve.
        splits: The held-out split names, the primary one first.
    """

    def __init__(
        self,
        comparisons: dict[int, Comparison],
        scores: dict[int, pd.DataFrame],
        fitted: dict[int, dict[tuple[str, int], Fitted]],
        splits: Sequence[str],
    ):
        self.comparisons, self.scores, self.fitted, self.splits = comparisons, scores, fitted, tuple(splits)

    @property
    def table(self) -> pd.DataFrame:
        """One row per (approach, per_class, seed): val, every held-out split, steps, seconds, parameters."""
        frames = []
        for per_class, comparison in self.comparisons.items():
            rows = comparison.table.rename(columns={"arm": "approach"}).assign(per_class=per_class)
            rows = rows.drop(columns=["test", "choice"]).merge(self.scores[per_class], on=["approach", "seed"])
            frames.append(rows)
        columns = [*CURVE_COLUMNS[:4], *self.splits, *CURVE_COLUMNS[4:]]
        return pd.concat(frames, ignore_index=True)[columns]

    def comparison(self, per_class: int, split: str | None = None) -> Comparison:
        """The :class:`Comparison` at one label budget, on ``split`` (default: the primary held-out split)."""
        if per_class not in self.comparisons:
            raise KeyError(f"no point at {per_class} labels per class; the budgets are {sorted(self.comparisons)}")
        comparison = self.comparisons[per_class]
        if split is None or split == self.splits[0]:
            return comparison
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; the held-out splits are {list(self.splits)}")
        table = comparison.table.drop(columns="test").merge(
            self.scores[per_class][["approach", "seed", split]].rename(columns={"approach": "arm", split: "test"}),
            on=["arm", "seed"],
        )
        return Comparison(table, metric=f"{split} {comparison.metric}", budget=comparison.budget)

    def summary(self, split: str | None = None) -> pd.DataFrame:
        """Mean and standard error over seeds per (approach, per_class): columns ``mean``, ``se``, ``n``."""
        return mean_and_se(self.table, split or self.splits[0], ["approach", "per_class"])


def run_learning_curve(
    arms: Mapping[str, Callable[[Trial, int], Outcome]],
    *,
    per_class: Sequence[int],
    seeds: Sequence[int],
    steps: int | Mapping[int, int],
    loaders: Mapping[str, Mapping[str, Any]],
    splits: Sequence[str] = ("test",),
    only: Mapping[str, Sequence[int]] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> LearningCurve:
    """Run every arm at every label budget through the comparison protocol.

    Args:
        arms: Name -> ``arm(trial, per_class) -> Outcome`` (e.g. from :func:`checkpoint_arm`).
        per_class: Labelled examples per class, one point of the curve each.
        seeds: The seeds (three or more for standard errors).
        steps: The optimizer step budget of every arm: one number, or ``{per_class: steps}`` so that
            larger labelled sets get more steps (every arm at a point still gets the same budget).
        loaders: ``{kind: {split: loader}}``: every held-out split in every input representation.
        splits: Held-out splits to score; the first is the protocol's test split.
        only: ``{arm: budgets}`` for arms too costly to run everywhere (e.g. fine-tuning).
        device: Where to score.
        progress: Show the protocol's progress bars.

    Returns:
        A :class:`LearningCurve`.
    """
    only = dict(only or {})
    unknown = set(only) - set(arms)
    if unknown:
        raise ValueError(f"only= names arms that do not exist: {sorted(unknown)}; the arms are {list(arms)}")
    if not per_class or any(int(n) != n or n < 1 for n in per_class):
        raise ValueError(f"per_class must be positive integers such as [1, 10, 100], got {list(per_class)}")
    steps_at = dict(steps) if isinstance(steps, Mapping) else {n: steps for n in per_class}
    missing = [n for n in per_class if n not in steps_at]
    if missing:
        raise ValueError(f"steps= has no budget for {missing} labels per class; give one for every point")
    comparisons, scores, fitted = {}, {}, {}
    for n in per_class:
        chosen = {
            name: (lambda trial, arm=arm, n=n: arm(trial, n))
            for name, arm in arms.items()
            if name not in only or n in only[name]
        }
        recorder = _Recorder(loaders, list(splits), device)
        comparison = compare(
            chosen, seeds=seeds, budget=Budget(steps=steps_at[n]), score_test=recorder, progress=progress
        )
        keys = list(zip(comparison.table["arm"], comparison.table["seed"]))
        comparisons[n] = comparison
        scores[n] = pd.DataFrame(
            [{"approach": arm, "seed": seed, **row} for (arm, seed), row in zip(keys, recorder.scores)]
        )
        fitted[n] = dict(zip(keys, recorder.fitted))
    return LearningCurve(comparisons, scores, fitted, splits)


def mean_and_se(table: pd.DataFrame, value: str, by: Sequence[str]) -> pd.DataFrame:
    """Mean, standard error (ddof=1 over sqrt(n)) and count of ``value`` per group.

    Returns:
        A DataFrame indexed by ``by`` with columns ``mean``, ``se`` (NaN for a single value) and ``n``.
    """
    if value not in table.columns:
        raise KeyError(f"no column {value!r}; the columns are {list(table.columns)}")
    grouped = table.groupby(list(by), sort=False)[value]
    result = pd.DataFrame({"mean": grouped.mean(), "n": grouped.count()})
    result["se"] = grouped.std(ddof=1) / np.sqrt(result["n"])
    return result[["mean", "se", "n"]]


def budget_to_reach(budgets: Sequence[float], accuracies: Sequence[float], target: float) -> float:
    """Labels per class at which a curve first reaches ``target``, interpolated on a log scale.

    Between the last budget below the target and the first at or above it, the crossing is
    placed by linear interpolation in (log budget, accuracy).

    Args:
        budgets: Increasing label budgets.
        accuracies: The accuracy at each.
        target: The accuracy to reach.

    Returns:
        The budget (the first one if it already reaches the target), or ``inf`` if never reached.

    Example:
        >>> budget_to_reach([1, 10, 100], [0.5, 0.7, 0.9], 0.8)  # halfway from 10 to 100 on a log axis
        31.62...
    """
    budgets, accuracies = np.asarray(budgets, dtype=float), np.asarray(accuracies, dtype=float)
    if len(budgets) != len(accuracies) or len(budgets) == 0 or np.any(np.diff(budgets) <= 0) or budgets[0] <= 0:
        raise ValueError(f"need positive increasing budgets with one accuracy each, got {budgets} and {accuracies}")
    reached = np.flatnonzero(accuracies >= target)
    if len(reached) == 0:
        return math.inf
    i = int(reached[0])
    if i == 0:
        return float(budgets[0])
    a0, a1 = accuracies[i - 1], accuracies[i]
    fraction = (target - a0) / (a1 - a0)
    return float(np.exp(np.log(budgets[i - 1]) + fraction * (np.log(budgets[i]) - np.log(budgets[i - 1]))))


def labels_to_reach(curve: LearningCurve, target: float, split: str | None = None) -> pd.DataFrame:
    """Per approach: the labels per class needed to reach ``target``, per seed and as mean +- SE.

    Approaches measured at a single budget are left out (a crossing needs a curve).

    Returns:
        A DataFrame indexed by approach: ``mean``, ``se`` (over the seeds that reached the target),
        ``reached`` (how many seeds did) and ``seeds``.
    """
    table = curve.table
    value = split or curve.splits[0]
    rows = {}
    for approach, group in table.groupby("approach", sort=False):
        if group["per_class"].nunique() < 2:
            continue
        per_seed = [
            budget_to_reach(g["per_class"].to_numpy(), g[value].to_numpy(), target)
            for _, g in group.sort_values("per_class").groupby("seed")
        ]
        finite = np.array([b for b in per_seed if math.isfinite(b)])
        se = finite.std(ddof=1) / math.sqrt(len(finite)) if len(finite) >= 2 else math.nan
        rows[approach] = {
            "mean": finite.mean() if len(finite) else math.inf,
            "se": se,
            "reached": len(finite),
            "seeds": len(per_seed),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def catch_up_budget(
    curve: LearningCurve, scratch: str, transfer: str, z: float = 2.0, split: str | None = None
) -> int | None:
    """The smallest label budget from which on ``scratch`` is no longer measurably behind ``transfer``.

    "Not behind" means the paired gap ``scratch - transfer`` is above ``-z`` standard errors, at
    that budget and at every larger one measured for both.

    Returns:
        The budget, or ``None`` when scratch is still behind at the largest budget.
    """
    budgets = [n for n, c in sorted(curve.comparisons.items()) if {scratch, transfer} <= set(c.arms)]
    if not budgets:
        raise ValueError(f"no budget has both {scratch!r} and {transfer!r}")
    behind = []
    for n in budgets:
        gap, se = curve.comparison(n, split).paired_difference(scratch, transfer)
        behind.append(gap < -z * (0.0 if math.isnan(se) else se))
    if behind[-1]:
        return None
    last_behind = max((i for i, flag in enumerate(behind) if flag), default=-1)
    return budgets[last_behind + 1]
