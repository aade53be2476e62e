"""The comparison protocol: every "A beats B" of the course is measured here, the same way.

An *arm* is a function ``arm(trial) -> Outcome``. :func:`compare` runs every arm on every seed,
inside :func:`~tlutils.core.runtime.seeded`, with the same :class:`Budget` for all. The
:class:`Trial` an arm receives carries a seed and the budget, and no test data: every choice
(epoch, learning rate, layer) is made on the validation split inside the arm, for example with
:func:`best_on_validation`. The protocol then scores the test split once per arm and seed,
checks the step budget, and returns a :class:`Comparison`: a tidy table, a summary with
standard errors and paired (same-seed) differences, and :func:`assert_better` /
:func:`assert_tied` for the claims a notebook makes in prose.

Example:
    >>> def linear_probe(trial):
    ...     loader = trial.loader(train_set, batch_size=32)
    ...     model, steps = train(head(), loader, epochs=trial.epochs_for(loader))
    ...     return Outcome(model, val=accuracy(model, val_set), steps=steps,
    ...                    trainable_params=trainable_parameter_count(model))
    >>> result = compare({"probe": linear_probe, "fine-tune": fine_tune}, seeds=[0, 1, 2],
    ...                  budget=Budget(steps=300), score_test=lambda out: accuracy(out.predictor, test_set))
    >>> result.summary(reference="probe")
    >>> assert_better(result, "fine-tune", "probe")
    >>> result.save("04_probe_vs_finetune")
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from tlutils.core.io import atomic_file
from tlutils.core.paths import project_root
from tlutils.core.runtime import seeded

#: Columns of :attr:`Comparison.table`, in order.
TABLE_COLUMNS = ("arm", "seed", "val", "test", "trainable_params", "seconds", "steps", "choice")

#: An arm may run this much longer than a seconds budget before :func:`compare` warns.
SECONDS_TOLERANCE = 1.2

_SPLITS = ("val", "test")
_STEM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class BudgetError(ValueError):
    """An arm used more optimizer steps than the budget allows."""


@dataclass(frozen=True)
class Budget:
    """The equal budget every arm gets: optimizer steps or wall-clock seconds (exactly one).

    Args:
        steps: Optimizer steps, counting every step of a validation search.
        seconds: Wall-clock seconds per arm and seed.

    Example:
        >>> Budget(steps=300).describe()
        '300 optimizer steps'
    """

    steps: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.seconds is None):
            raise ValueError("a Budget needs exactly one of steps= or seconds=, e.g. Budget(steps=300)")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise ValueError(f"Budget(steps={self.steps!r}): steps must be a positive integer")
        if self.seconds is not None and not (isinstance(self.seconds, (int, float)) and 0 < self.seconds < math.inf):
            raise ValueError(f"Budget(seconds={self.seconds!r}): seconds must be a positive finite number")

    def describe(self) -> str:
        """Say the budget in words, for table captions and plot labels."""
        if self.steps is not None:
            return f"{self.steps} optimizer step{'s' if self.steps != 1 else ''}"
        return f"{self.seconds:g} seconds of wall-clock time"

    def to_dict(self) -> dict:
        """The budget as plain data: ``{"steps": ..., "seconds": ...}``."""
        return {"steps": self.steps, "seconds": self.seconds}


@dataclass(frozen=True)
class Trial:
    """Everything an arm receives: a seed and the budget. It holds no test data, by design.

    Args:
        seed: The seed of this run; :func:`compare` has already seeded Python, NumPy and torch with it.
        budget: The budget shared by all arms.
        started: ``time.perf_counter()`` when the arm started (set on creation).
    """

    seed: int
    budget: Budget
    started: float = field(default_factory=time.perf_counter, compare=False, repr=False)

    def loader(self, dataset: Dataset, batch_size: int, shuffle: bool = True, *,
               drop_last: bool = False, collate_fn: Callable | None = None) -> DataLoader:
        """A DataLoader whose batch order depends on the seed only.

        Every arm of the same seed that calls this on a data set of the same length sees the
        same batches in the same order, epoch after epoch; another seed gives another order.

        Args:
            dataset: The training (or validation) data set.
            batch_size: Examples per batch.
            shuffle: Reshuffle every epoch (with a generator seeded by ``self.seed``).
            drop_last: Drop a last, smaller batch.
            collate_fn: How to stack examples into a batch (default: PyTorch's).

        Returns:
            A single-process :class:`~torch.utils.data.DataLoader`.
        """
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                          collate_fn=collate_fn, generator=generator)

    def epochs_for(self, loader: DataLoader) -> int:
        """The number of whole epochs of ``loader`` that fit the step budget.

        Args:
            loader: The training loader (its length is the number of steps per epoch).

        Returns:
            ``budget.steps // len(loader)``, at least 1.

        Raises:
            ValueError: For a seconds budget, or when not even one epoch fits the budget.
        """
        if self.budget.steps is None:
            raise ValueError(f"epochs_for needs a steps budget, not {self.budget.describe()}; "
                             "with a seconds budget train until trial.deadline()")
        steps_per_epoch = len(loader)
        if steps_per_epoch > self.budget.steps:
            raise ValueError(f"one epoch is {steps_per_epoch} steps, more than the budget of "
                             f"{self.budget.describe()}; raise the budget or the batch size, or stop by step count")
        return self.budget.steps // steps_per_epoch

    def deadline(self) -> float:
        """The ``time.perf_counter()`` value by which a seconds-budget arm must stop."""
        if self.budget.seconds is None:
            raise ValueError(f"deadline needs a seconds budget, not {self.budget.describe()}; "
                             "with a steps budget use trial.epochs_for(loader) or trial.budget.steps")
        return self.started + self.budget.seconds

    def exhausted(self, steps_done: int) -> bool:
        """Whether the budget is spent: ``steps_done`` steps, or the deadline has passed.

        Example:
            >>> while not trial.exhausted(step):
            ...     step += train_one_batch(...)
        """
        if self.budget.steps is not None:
            return steps_done >= self.budget.steps
        return time.perf_counter() >= self.deadline()


@dataclass
class Outcome:
    """What an arm returns.

    Args:
        predictor: Whatever ``score_test`` needs: a model, a fitted pipeline, a callable.
        val: The validation score at the setting the arm chose.
        steps: Optimizer steps used, the validation search included.
        trainable_params: Parameters the arm trained.
        choice: What was chosen on validation, e.g. ``{"epoch": 4, "lr": 1e-3}``.
    """

    predictor: Any
    val: float
    steps: int
    trainable_params: int
    choice: dict = field(default_factory=dict)


def best_on_validation(options: Sequence, run: Callable[[Any], Outcome], name: str = "option") -> Outcome:
    """Run every option and keep the one with the highest validation score.

    Args:
        options: The settings to try (learning rates, layers, ...).
        run: ``run(option) -> Outcome``.
        name: Key under which the chosen option is recorded in ``choice``.

    Returns:
        The best Outcome (the first one on ties) with ``choice[name]`` set and ``steps`` the sum
        over all options: the search cost counts against the budget.

    Example:
        >>> best = best_on_validation([1e-3, 1e-2], lambda lr: train_probe(trial, lr), name="lr")
        >>> best.choice
        {'lr': 0.01}
    """
    options = list(options)
    if not options:
        raise ValueError("best_on_validation needs at least one option")
    outcomes = [run(option) for option in options]
    for option, outcome in zip(options, outcomes):
        if not isinstance(outcome, Outcome):
            raise TypeError(f"run({option!r}) returned {type(outcome).__name__}; it must return an Outcome")
    best_index = max(range(len(outcomes)), key=lambda i: (outcomes[i].val, -i))
    best = outcomes[best_index]
    if name in best.choice:
        raise ValueError(f"choice already has {name!r} ({best.choice}); pass another name=")
    return dataclasses.replace(best, steps=sum(int(outcome.steps) for outcome in outcomes),
                               choice={**best.choice, name: options[best_index]})


def compare(arms: Mapping[str, Callable[[Trial], Outcome]], *, seeds: Sequence[int], budget: Budget,
            score_test: Callable[[Outcome], float], metric: str = "accuracy", progress: bool = True) -> Comparison:
    """Run every arm on every seed under the same budget and score the test split once each.

    Args:
        arms: Name -> ``arm(trial) -> Outcome``, in the order the results are shown.
        seeds: Distinct seeds; each arm runs once per seed, inside ``seeded(seed)``.
        budget: The budget every arm gets.
        score_test: ``score_test(outcome) -> float``: the test score, called by the protocol only.
        metric: Name of the score, for labels.
        progress: Show a progress bar over the arm x seed runs.

    Returns:
        A :class:`Comparison`.

    Raises:
        BudgetError: An arm used more optimizer steps than a steps budget.
    """
    from tqdm.auto import tqdm

    seeds = _check_inputs(arms, seeds, budget, score_test)
    rows = []
    with tqdm(total=len(arms) * len(seeds), desc="compare", disable=not progress) as bar:
        for seed in seeds:
            for name, arm in arms.items():
                bar.set_postfix(arm=name, seed=seed)
                rows.append(_run_arm(name, arm, seed, budget, score_test))
                bar.update(1)
    return Comparison(pd.DataFrame(rows, columns=list(TABLE_COLUMNS)), metric=metric, budget=budget)


def _check_inputs(arms: Mapping, seeds: Sequence[int], budget: Budget, score_test: Callable) -> list[int]:
    if not isinstance(arms, Mapping) or not arms:
        raise ValueError("compare needs at least one arm: a dict {name: arm(trial) -> Outcome}")
    for name, arm in arms.items():
        if not isinstance(name, str) or not callable(arm):
            raise TypeError(f"arm {name!r}: arms map a name (str) to a function arm(trial) -> Outcome")
    if isinstance(seeds, (int, str)):
        raise TypeError(f"seeds must be a sequence of integers such as [0, 1, 2], not {seeds!r}")
    seeds = [int(seed) for seed in seeds]
    if not seeds:
        raise ValueError("compare needs at least one seed (two or more for standard errors), e.g. seeds=[0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}; a repeated seed repeats the same run")
    if not isinstance(budget, Budget):
        raise TypeError(f"budget must be a Budget, e.g. Budget(steps=300), not {type(budget).__name__}")
    if not callable(score_test):
        raise TypeError("score_test must be a function score_test(outcome) -> float")
    return seeds


def _run_arm(name: str, arm: Callable, seed: int, budget: Budget, score_test: Callable) -> dict:
    """One arm on one seed: train (timed), check the budget, score the test split once."""
    with seeded(seed):
        try:
            started = time.perf_counter()
            outcome = arm(Trial(seed=seed, budget=budget, started=started))
            seconds = time.perf_counter() - started
        except Exception as error:
            error.add_note(f"while running arm {name!r} with seed {seed}")
            raise
    _check_outcome(outcome, name, seed, budget, seconds)
    with seeded(seed):
        test = _finite(score_test(outcome), f"score_test for arm {name!r} (seed {seed})")
    return {"arm": name, "seed": seed, "val": _finite(outcome.val, f"arm {name!r} (seed {seed}) val"), "test": test,
            "trainable_params": int(outcome.trainable_params), "seconds": seconds, "steps": int(outcome.steps),
            "choice": dict(outcome.choice)}


def _check_outcome(outcome: Any, name: str, seed: int, budget: Budget, seconds: float) -> None:
    if not isinstance(outcome, Outcome):
        raise TypeError(f"arm {name!r} (seed {seed}) returned {type(outcome).__name__}; it must return an Outcome")
    if not isinstance(outcome.choice, dict):
        raise TypeError(f"arm {name!r} (seed {seed}): Outcome.choice must be a dict, not {type(outcome.choice)}")
    if budget.steps is not None and outcome.steps > budget.steps:
        raise BudgetError(f"arm {name!r} (seed {seed}) used {outcome.steps} optimizer steps, more than the budget "
                          f"of {budget.steps}; train for trial.epochs_for(loader) epochs, and count every step "
                          "of a validation search (best_on_validation sums them)")
    if budget.seconds is not None and seconds > SECONDS_TOLERANCE * budget.seconds:
        warnings.warn(f"arm {name!r} (seed {seed}) took {seconds:.2f} s, more than {SECONDS_TOLERANCE:g} x the "
                      f"budget of {budget.describe()}; stop it at trial.deadline()", stacklevel=4)


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} is {number}; a diverged run cannot be compared: fix the arm (e.g. a lower lr)")
    return number


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error (sample std with ddof=1 over sqrt(n)); the SE is NaN below two values."""
    values = np.asarray(values, dtype=float)
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) >= 2 else math.nan
    return float(values.mean()), se


class Comparison:
    """The result of :func:`compare`: a tidy table plus the summaries and claims built on it.

    Args:
        table: One row per (arm, seed) with the columns of :data:`TABLE_COLUMNS`.
        metric: Name of the score.
        budget: The budget the arms ran under.
    """

    def __init__(self, table: pd.DataFrame, *, metric: str, budget: Budget):
        missing = [column for column in TABLE_COLUMNS if column not in table.columns]
        if missing:
            raise ValueError(f"the table lacks the columns {missing}; it needs {list(TABLE_COLUMNS)}")
        if table.empty or table.duplicated(["arm", "seed"]).any():
            raise ValueError("the table needs one row per (arm, seed), at least one, and no repeats")
        self.table = table.reset_index(drop=True)
        self.metric = metric
        self.budget = budget
        self.arms: tuple[str, ...] = tuple(pd.unique(self.table["arm"]))
        self.seeds: tuple[int, ...] = tuple(int(seed) for seed in pd.unique(self.table["seed"]))
        for arm in self.arms:
            if set(self.table.loc[self.table["arm"] == arm, "seed"]) != set(self.seeds):
                raise ValueError(f"arm {arm!r} lacks some of the seeds {list(self.seeds)}; differences are paired "
                                 "by seed, so every arm needs every seed")

    def _check_arm(self, arm: str) -> None:
        if arm not in self.arms:
            raise ValueError(f"unknown arm {arm!r}; the arms are: {', '.join(repr(name) for name in self.arms)}")

    def _scores(self, arm: str, on: str) -> pd.Series:
        """The scores of one arm on one split, indexed by seed (in the order of :attr:`seeds`)."""
        self._check_arm(arm)
        if on not in _SPLITS:
            raise ValueError(f"unknown split {on!r}; allowed values: 'val', 'test'")
        rows = self.table[self.table["arm"] == arm]
        return rows.set_index("seed")[on].astype(float).reindex(list(self.seeds))

    def paired_difference(self, a: str, b: str, on: str = "test") -> tuple[float, float]:
        """Mean and standard error of ``a - b`` over seeds, paired by seed.

        Pairing removes what a seed does to both arms alike (split, initialisation, batch order),
        so its standard error is usually far smaller than the two arms' errors combined.

        Returns:
            ``(mean, se)``; the SE is NaN with a single seed.
        """
        return _mean_se((self._scores(a, on) - self._scores(b, on)).to_numpy())

    def summary(self, reference: str | None = None) -> pd.DataFrame:
        """One row per arm: n, val_mean, val_se, test_mean, test_se, (diff_mean, diff_se), costs.

        Args:
            reference: An arm; adds the paired difference ``arm - reference`` on test.

        Returns:
            A DataFrame indexed by arm, in the order the arms were given; the last columns are the
            mean trainable parameters, steps and seconds.
        """
        if reference is not None:
            self._check_arm(reference)
        rows = []
        for arm in self.arms:
            row = {"n": len(self.seeds)}
            for on in _SPLITS:
                row[f"{on}_mean"], row[f"{on}_se"] = _mean_se(self._scores(arm, on).to_numpy())
            if reference is not None:
                row["diff_mean"], row["diff_se"] = self.paired_difference(arm, reference)
            costs = self.table.loc[self.table["arm"] == arm, ["trainable_params", "steps", "seconds"]]
            rows.append({**row, **costs.astype(float).mean().to_dict()})
        return pd.DataFrame(rows, index=pd.Index(self.arms, name="arm"))

    def best(self, on: str = "val") -> str:
        """The arm with the highest mean validation score (the first one on ties).

        Raises:
            ValueError: For ``on="test"``: choosing on the test split would leak it into the result.
        """
        if on == "test":
            raise ValueError("choices are made on the validation split, never on test: picking the best arm on "
                             "test makes its test score optimistic. Use best() (on='val')")
        if on != "val":
            raise ValueError(f"unknown split {on!r}; best() chooses on 'val'")
        means = [self._scores(arm, "val").mean() for arm in self.arms]
        return self.arms[int(np.argmax(means))]

    def to_dict(self) -> dict:
        """Plain, JSON-ready data: metric, budget, arms, seeds, the rows and the summary."""
        summary = self.summary().reset_index()
        return _jsonable({"metric": self.metric, "budget": self.budget.to_dict(), "arms": list(self.arms),
                          "seeds": list(self.seeds), "rows": self.table.to_dict(orient="records"),
                          "summary": summary.to_dict(orient="records")})

    @classmethod
    def from_dict(cls, data: dict) -> Comparison:
        """Rebuild a Comparison from :meth:`to_dict` (e.g. a saved result)."""
        table = pd.DataFrame(data["rows"], columns=list(TABLE_COLUMNS))
        return cls(table, metric=data["metric"], budget=Budget(**data["budget"]))

    def save(self, name: str, folder: str | Path | None = None) -> Path:
        """Write :meth:`to_dict` atomically as JSON to ``<folder>/<name>.json``.

        Args:
            name: A plain file stem such as ``"04_strategies"`` (no folders, no ``..``).
            folder: Where to write; default ``<project root>/data/results``.

        Returns:
            The path written.
        """
        path = _result_path(name, folder)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, name: str, folder: str | Path | None = None) -> Comparison:
        """Read a Comparison written by :meth:`save`."""
        return cls.from_dict(json.loads(_result_path(name, folder).read_text()))

    def plot(self, title: str = ""):
        """Horizontal bars of the test mean +- one standard error per arm.

        Returns:
            The matplotlib figure (nothing is saved).
        """
        import matplotlib.pyplot as plt

        summary = self.summary()
        errors = summary["test_se"].fillna(0.0)
        fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(summary) + 1.3))
        ax.barh(list(summary.index), summary["test_mean"], xerr=errors, capsize=4, color="tab:blue", alpha=0.8)
        ax.invert_yaxis()  # the first arm on top, as in the summary
        ax.set_xlabel(f"test {self.metric}: mean ± SE over {len(self.seeds)} seeds, {self.budget.describe()}")
        ax.set_title(title)
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        return (f"Comparison(arms={list(self.arms)}, seeds={list(self.seeds)}, metric={self.metric!r}, "
                f"budget={self.budget.describe()!r})")

    def _repr_html_(self) -> str:
        caption = (f"<p>{self.metric}: {len(self.arms)} arms x {len(self.seeds)} seeds, "
                   f"{self.budget.describe()} each; mean and standard error</p>")
        return caption + self.summary().to_html(float_format=lambda value: f"{value:.4g}")


def _result_path(name: str, folder: str | Path | None) -> Path:
    if not isinstance(name, str) or not _STEM.fullmatch(name) or ".." in name or name.endswith(".json"):
        raise ValueError(f"result name {name!r} must be a plain file stem such as '04_strategies' "
                         "(letters, digits, '_', '-', '.'; no '/', no '..', no '.json'); pass folder= to choose where")
    folder = Path(folder) if folder is not None else project_root() / "data" / "results"
    return folder / f"{name}.json"


def _jsonable(value: Any) -> Any:
    """Turn NumPy scalars, tuples and non-finite floats into plain JSON values (NaN -> None)."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _claim_gap(comparison: Comparison, a: str, b: str, on: str, z: float) -> tuple[float, float, int]:
    if len(comparison.seeds) < 2:
        raise ValueError(f"a claim about {a!r} and {b!r} needs at least two seeds: a standard error needs two "
                         f"seeds, this comparison has {len(comparison.seeds)}; rerun compare with seeds=[0, 1, 2]")
    if not z > 0:
        raise ValueError(f"z must be positive, got {z}")
    gap, se = comparison.paired_difference(a, b, on=on)
    return gap, se, len(comparison.seeds)


def assert_better(comparison: Comparison, a: str, b: str, on: str = "test", z: float = 2.0) -> tuple[float, float]:
    """Pass only when ``a`` beats ``b``: the paired gap is positive and more than ``z`` standard errors.

    Args:
        comparison: A :class:`Comparison` with at least two seeds.
        a: The arm claimed to be better.
        b: The arm it is claimed to beat.
        on: ``"test"`` or ``"val"``.
        z: How many standard errors the gap must exceed.

    Returns:
        ``(gap, se)``: the mean paired difference ``a - b`` and its standard error.

    Raises:
        AssertionError: The claim does not hold (or is within the noise).

    Example:
        >>> gap, se = assert_better(result, "fine-tune", "probe")
    """
    gap, se, n = _claim_gap(comparison, a, b, on, z)
    numbers = f"paired gap {gap:+.4g}, SE {se:.4g}, n={n} seeds"
    if gap <= 0:
        raise AssertionError(f"the claim '{a}' beats '{b}' on {on} does not hold: {numbers}; '{a}' is not ahead")
    if gap <= z * se:
        raise AssertionError(f"the claim '{a}' beats '{b}' on {on} does not hold: {numbers}; the gap is within the "
                             f"noise (not more than {z:g} SE = {z * se:.4g}); drop the claim or add seeds")
    return gap, se


def assert_tied(comparison: Comparison, a: str, b: str, on: str = "test", z: float = 2.0) -> tuple[float, float]:
    """Pass when there is no measurable difference: ``|gap| <= z * se`` (identical arms: gap 0, SE 0).

    Args:
        comparison: A :class:`Comparison` with at least two seeds.
        a: One arm.
        b: The other arm.
        on: ``"test"`` or ``"val"``.
        z: How many standard errors the gap may reach.

    Returns:
        ``(gap, se)``: the mean paired difference ``a - b`` and its standard error.

    Raises:
        AssertionError: The gap exceeds ``z`` standard errors.
    """
    gap, se, n = _claim_gap(comparison, a, b, on, z)
    if abs(gap) > z * se:
        raise AssertionError(f"'{a}' and '{b}' are not tied on {on}: paired gap {gap:+.4g}, SE {se:.4g}, n={n} seeds; "
                             f"|gap| is more than {z:g} SE = {z * se:.4g}")
    return gap, se


def gap_verdict(gap: float, se: float, z: float = 2.0) -> str:
    """What a paired gap says once its noise is counted: ``"better"``, ``"worse"`` or ``"tie"``.

    A gap counts only when it exceeds ``z`` standard errors; inside that band the two
    arms are tied. An undefined SE (one seed) is treated as 0, so any non-zero gap counts.

    Args:
        gap: The mean paired difference ``a - b``.
        se: Its standard error.
        z: How many standard errors the gap must exceed.

    Returns:
        ``"better"`` (``a`` ahead), ``"worse"`` (``a`` behind) or ``"tie"``.

    Example:
        >>> gap_verdict(0.05, 0.01), gap_verdict(0.01, 0.01)
        ('better', 'tie')
    """
    if not z > 0:
        raise ValueError(f"z must be positive, got {z}")
    se_used = 0.0 if math.isnan(se) else se
    return "better" if gap > z * se_used else "worse" if gap < -z * se_used else "tie"


def claim_verdict(comparison: Comparison, a: str, b: str, on: str = "test", z: float = 2.0) -> dict:
    """The paired gap ``a - b`` over seeds and its verdict in words, for printing a claim that is not asserted.

    Args:
        comparison: A :class:`Comparison`.
        a: One arm.
        b: The arm it is measured against.
        on: ``"test"`` or ``"val"``.
        z: How many standard errors make a gap count (see :func:`gap_verdict`).

    Returns:
        ``{"gap", "se", "verdict", "text"}``, e.g. text ``"a is tied with b: +0.004 ± 0.006"``.

    Example:
        >>> print(claim_verdict(result, "LoRA", "last blocks")["text"])
    """
    gap, se = comparison.paired_difference(a, b, on=on)
    verdict = gap_verdict(gap, se, z)
    words = {"better": "better than", "worse": "worse than", "tie": "tied with"}[verdict]
    return {"gap": gap, "se": se, "verdict": verdict, "text": f"{a} is {words} {b}: {gap:+.3f} ± {se:.3f}"}
