"""The strategy table of notebook 04: the strategies as arms of the comparison protocol, their table and plot."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlutils.core.compare import Comparison, Outcome, Trial
from tlutils.core.metrics import accuracy_standard_error
from tlutils.core.surgery import head_name
from tlutils.core.train import evaluate
from tlutils.topics.learning_curves import budget_loader
from tlutils.topics.regularizers import total_weight_distance
from tlutils.topics.strategies import (
    StrategyRun,
    feature_extraction,
    full_fine_tuning,
    gradual_unfreezing,
    layerwise_lr_fine_tuning,
    linear_probe_then_fine_tune,
    partial_fine_tuning,
)


def strategy_summary(run: StrategyRun, model: nn.Module, val_loader, test_loader, device: torch.device) -> dict:
    """One table row: strategy, trainable parameters, seconds, validation and test accuracy.

    Both accuracies are measured on images through the whole model, the same way for
    every strategy.
    """
    return {"strategy": run.name, "trainable_params": run.trainable_params, "seconds": run.seconds,
            "val_accuracy": evaluate(model, val_loader, device)["accuracy"],
            "test_accuracy": evaluate(model, test_loader, device)["accuracy"]}


def _short_number(value: float) -> str:
    """1234567 -> '1.23M', 12810 -> '12.8k', 0.8123 -> '0.812', 45.04 -> '45'."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:.2f}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.3g}"


def plot_strategy_table(table, test_size: int, title: str = ""):
    """Three panels per strategy: test accuracy (with one standard error), wall time, trainable parameters.

    Args:
        table: A pandas DataFrame of :func:`strategy_summary` rows.
        test_size: Number of test examples (for the error bars).
        title: Figure title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    names = list(table["strategy"])
    errors = [accuracy_standard_error(a, test_size) for a in table["test_accuracy"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = ((table["test_accuracy"], "test accuracy", "linear"), (table["seconds"], "wall time (s)", "linear"),
              (table["trainable_params"], "trainable parameters", "log"))
    for ax, (values, label, scale) in zip(axes, panels):
        bars = ax.bar(names, values, yerr=errors if label == "test accuracy" else None, capsize=3,
                      color="tab:blue" if label == "test accuracy" else "tab:grey")
        ax.bar_label(bars, labels=[_short_number(value) for value in values], fontsize=7, padding=2)
        ax.set(ylabel=label, yscale=scale)
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    low = min(table["test_accuracy"]) - 3 * max(errors)
    axes[0].set_ylim(max(0.0, low), min(1.0, max(table["test_accuracy"]) + 3 * max(errors)))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# --- The strategies through the comparison protocol -------------------------------------------------------------

#: The strategies :func:`strategy_arm` knows, with the tlutils function each one calls.
STRATEGY_KINDS = ("feature extraction", "partial", "full", "layer-wise", "gradual", "lp-ft")

#: The stage of a run that trains a head on cached features: it sends no image through the body.
CACHED_STAGE = "head on cached features"


@dataclass
class StrategyBench:
    """What every strategy arm of notebook 04 shares: data, step budget, learning rates, and what it measured.

    Every body-training arm gets the same budget: ``steps`` optimizer steps on batches of
    ``batch_size`` images drawn with replacement (:func:`~tlutils.topics.learning_curves.budget_loader`),
    whatever the size of the training set, with validation scored ``checkpoints`` times along the way
    and the best checkpoint kept. A head trained on cached features sends no image through the body;
    its ``probe_steps`` (about a thousand times cheaper each) are counted apart.

    Args:
        build_model: Returns a fresh pre-trained model with its new head; called inside the
            protocol's seeded block, so the head's initialisation depends on the trial's seed.
        train_set: The labelled training images.
        feature_train: The same images in a fixed order, for the feature cache.
        val_loader: The validation images (fixed order).
        steps: Optimizer steps through the body, per arm and seed.
        checkpoints: Validation scores per run (``steps`` must be a multiple).
        batch_size: Images per step.
        lr: AdamW rate when the body trains.
        head_lr: Rate of a head trained alone (and the top rate of layer-wise schemes).
        probe_steps: Steps of a head on cached features (feature extraction, LP-FT's probe).
        cache_name: Prefix of the feature cache files.
        pretrained: ``snapshot_weights`` of the pre-trained model, to measure how far the body moved.
        device: Where to train.
        verbose: Print one line per finished run (its validation accuracy and time).
    """

    build_model: Callable[[], nn.Module]
    train_set: Dataset
    feature_train: DataLoader
    val_loader: DataLoader
    steps: int
    checkpoints: int
    batch_size: int
    lr: float
    head_lr: float
    probe_steps: int
    cache_name: str
    pretrained: dict
    device: torch.device | None = None
    verbose: bool = True
    runs: dict = field(default_factory=dict)
    body_distance: dict = field(default_factory=dict)

    def loader(self, seed: int, steps: int | None = None) -> DataLoader:
        """``steps`` (default: the budget) steps' worth of batches, split into ``checkpoints`` passes."""
        return budget_loader(self.train_set, self.batch_size, (steps or self.steps) // self.checkpoints, seed)


def _train_strategy(bench: StrategyBench, kind: str, model: nn.Module, seed: int, options: dict) -> StrategyRun:
    common = {"device": bench.device, "seed": seed}
    probe = {"cache_name": bench.cache_name, "fingerprint": f"{bench.cache_name} {bench.device}"}
    if kind == "feature extraction":
        return feature_extraction(model, bench.feature_train, bench.val_loader, epochs=bench.checkpoints,
                                  lr=bench.head_lr, steps=bench.probe_steps, **probe, **common)
    if kind == "lp-ft":
        return linear_probe_then_fine_tune(model, bench.feature_train, bench.val_loader, bench.loader(seed),
                                           bench.val_loader, probe_epochs=bench.checkpoints, probe_lr=bench.head_lr,
                                           epochs=bench.checkpoints, lr=bench.lr, probe_steps=bench.probe_steps,
                                           **probe, **common)
    if kind == "partial":
        return partial_fine_tuning(model, bench.loader(seed), bench.val_loader, blocks=options["blocks"],
                                   epochs=bench.checkpoints, lr=bench.lr, **common)
    if kind == "full":
        return full_fine_tuning(model, bench.loader(seed), bench.val_loader, epochs=bench.checkpoints, lr=bench.lr,
                                **common)
    if kind == "layer-wise":
        return layerwise_lr_fine_tuning(model, bench.loader(seed), bench.val_loader, epochs=bench.checkpoints,
                                        head_lr=bench.head_lr, **options, **common)
    schedule = options["schedule"]  # gradual: the budget is split evenly over the stages
    stage_loader = budget_loader(bench.train_set, bench.batch_size, bench.steps // len(schedule), seed)
    return gradual_unfreezing(model, stage_loader, bench.val_loader, schedule=schedule, epochs_per_stage=1,
                              lr=options["lrs"], **common)


def strategy_arm(bench: StrategyBench, kind: str, **options) -> Callable[[Trial], Outcome]:
    """An arm for :func:`~tlutils.core.compare.compare`: one strategy under the bench's budget.

    Args:
        bench: The shared data, budget and rates.
        kind: One of :data:`STRATEGY_KINDS`.
        **options: ``blocks=`` (partial), ``decay=`` or ``block_lrs=`` (layer-wise),
            ``schedule=`` and ``lrs=`` (gradual).

    Returns:
        ``arm(trial) -> Outcome``: its ``val`` is the validation accuracy of the kept checkpoint,
        ``steps`` the optimizer steps through the body; the run and the distance the body moved
        from the pre-trained weights are stored in ``bench.runs`` / ``bench.body_distance`` under
        ``(run name, seed)``.

    Example:
        >>> arms = {"full fine-tuning": strategy_arm(bench, "full")}
        >>> result = compare(arms, seeds=[0, 1, 2], budget=Budget(steps=bench.steps), score_test=score)
    """
    if kind not in STRATEGY_KINDS:
        raise ValueError(f"unknown strategy {kind!r}; choose one of {', '.join(STRATEGY_KINDS)}")

    def arm(trial: Trial) -> Outcome:
        model = bench.build_model()
        run = _train_strategy(bench, kind, model, trial.seed, options)
        bench.runs[run.name, trial.seed] = run
        bench.body_distance[run.name, trial.seed] = total_weight_distance(model, bench.pretrained,
                                                                          exclude=[head_name(model)])
        last = run.stages[-1][1]
        kept = last.epochs[(last.best_epoch or len(last.epochs)) - 1]
        body_steps = sum(history.steps for stage, history in run.stages if stage != CACHED_STAGE)
        head_steps = sum(history.steps for stage, history in run.stages if stage == CACHED_STAGE)
        if bench.verbose:
            print(f"{run.name}, seed {trial.seed}: validation {kept['val_accuracy']:.3f} at step {kept['steps']}, "
                  f"{run.seconds:.1f} s", flush=True)
        return Outcome(model.eval(), val=kept["val_accuracy"], steps=body_steps,
                       trainable_params=run.trainable_params,
                       choice={"kept step": kept["steps"], "head steps on cached features": head_steps})

    return arm


def strategy_table(comparisons: Sequence[Comparison], bench: StrategyBench) -> pd.DataFrame:
    """One row per arm of several comparisons: seeds, costs, validation and test accuracy (mean and SE).

    The test column is reported once per arm and seed by the protocol and is not used for choosing.

    Args:
        comparisons: Results of :func:`~tlutils.core.compare.compare` (e.g. three-seed and one-seed arms).
        bench: The bench the arms ran on (for the body distances).

    Returns:
        A DataFrame indexed by strategy.
    """
    frames = []
    for comparison in comparisons:
        summary = comparison.summary()
        distances = {arm: np.mean([bench.body_distance[arm, seed] for seed in comparison.seeds])
                     for arm in comparison.arms}
        frames.append(pd.DataFrame({
            "seeds": summary["n"].astype(int), "trainable_params": summary["trainable_params"].astype(int),
            "body_steps": summary["steps"].astype(int), "seconds": summary["seconds"],
            "val_mean": summary["val_mean"], "val_se": summary["val_se"],
            "test_mean": summary["test_mean"], "test_se": summary["test_se"],
            "body_distance": pd.Series(distances)}))
    table = pd.concat(frames)
    table.index.name = "strategy"
    return table


def pick_on_validation(comparison: Comparison, z: float = 2.0, cost: Mapping[str, float] | None = None) -> dict:
    """The best arm on validation, the arms tied with it, and the cheapest of those.

    Tied means a paired (same-seed) validation gap to the best of at most ``z`` standard errors.
    The test split plays no part.

    Args:
        comparison: The compared arms.
        z: Standard errors within which a validation gap is a tie.
        cost: Arm -> its cost (e.g. training FLOPs, which do not vary from run to run); by default
            the mean measured seconds, which depend on the machine and its load.

    Returns:
        ``{"best": arm, "tied": [arms], "pick": arm, "gaps": {arm: (gap, se)}}``.
    """
    best = comparison.best()
    gaps = {arm: comparison.paired_difference(arm, best, on="val") for arm in comparison.arms}
    tied = [arm for arm, (gap, se) in gaps.items() if arm == best or abs(gap) <= z * se]
    costs = comparison.summary()["seconds"] if cost is None else cost
    missing = [arm for arm in tied if arm not in costs]
    if missing:
        raise ValueError(f"cost has no entry for {missing}; give one for every arm of the comparison")
    pick = min(tied, key=lambda arm: costs[arm])
    return {"best": best, "tied": tied, "pick": pick, "gaps": gaps}


def run_flops(step_flops: Mapping[str, int], *, steps: int, probe_steps: int, extraction: float) -> dict:
    """Training FLOPs of one run of each strategy whose step cost :func:`strategy_step_flops` counted.

    Feature extraction pays one forward pass over the training set (``extraction``) and
    ``probe_steps`` head steps; partial and full fine-tuning pay ``steps`` steps through the body;
    LP-FT pays the probe, then the full fine-tuning.

    Args:
        step_flops: From :func:`~tlutils.topics.strategies.strategy_step_flops`.
        steps, probe_steps: Optimizer steps through the body, and head steps on cached features.
        extraction: FLOPs of caching the training set's features.

    Returns:
        Strategy name -> FLOPs of one run (feature extraction, partial, full fine-tuning, LP-FT).
    """
    if steps <= 0 or probe_steps < 0 or extraction < 0:
        raise ValueError(f"steps must be positive and probe_steps, extraction non-negative; got "
                         f"steps={steps}, probe_steps={probe_steps}, extraction={extraction}")
    probe = probe_steps * step_flops["feature extraction"] + extraction
    costs = {arm: steps * flops for arm, flops in step_flops.items() if arm != "feature extraction"}
    return {"feature extraction": probe, **costs, "LP-FT": probe + steps * step_flops["full fine-tuning"]}


def paired_gaps(comparisons: Mapping[int, Comparison], a: str, b: str, on: str = "test") -> pd.DataFrame:
    """Per seed, ``a - b`` in each of several comparisons (e.g. one per training-set size).

    Args:
        comparisons: Key (e.g. labels per class) -> a comparison holding arms ``a`` and ``b``, same seeds.
        a, b: The arms.
        on: ``"test"`` or ``"val"``.

    Returns:
        A DataFrame indexed by seed, one column per key.
    """
    columns = {}
    for key, comparison in comparisons.items():
        rows = comparison.table.set_index(["arm", "seed"])[on]
        columns[key] = pd.Series({seed: rows[a, seed] - rows[b, seed] for seed in comparison.seeds})
    gaps = pd.DataFrame(columns)
    gaps.index.name = "seed"
    return gaps


def plot_strategy_comparison(table: pd.DataFrame, title: str = ""):
    """Three panels per strategy: test accuracy (mean +- SE), wall time, trainable parameters.

    Args:
        table: A :func:`strategy_table`.
        title: Figure title.

    Returns:
        The matplotlib figure (nothing is saved).
    """
    import matplotlib.pyplot as plt

    names = [f"{name} ({seeds} seed{'s' if seeds > 1 else ''})" for name, seeds in table["seeds"].items()]
    errors = table["test_se"].fillna(0.0)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = ((table["test_mean"], "test accuracy (reported)", "linear"), (table["seconds"], "wall time (s)", "linear"),
              (table["trainable_params"], "trainable parameters", "log"))
    for ax, (values, label, scale) in zip(axes, panels):
        is_accuracy = label.startswith("test")
        bars = ax.bar(names, values, yerr=errors if is_accuracy else None, capsize=3,
                      color="tab:blue" if is_accuracy else "tab:grey")
        ax.bar_label(bars, labels=[_short_number(value) for value in values], fontsize=7, padding=2)
        ax.set(ylabel=label, yscale=scale)
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    spread = max(float(errors.max()), 0.01)
    axes[0].set_ylim(max(0.0, table["test_mean"].min() - 4 * spread), min(1.0, table["test_mean"].max() + 4 * spread))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
