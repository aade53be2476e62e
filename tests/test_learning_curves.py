"""Learning curves, training cost and notebook 11's table helpers, on tiny synthetic data."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlutils.core.compare import Budget, Outcome, Trial
from tlutils.core.features import LinearProbe
from tlutils.course.scratch_vs_transfer import (
    SmallImageCNN,
    cross_budget_comparison,
    disjoint_balanced,
    format_mean_se,
    guide_table,
    plot_cost_scaling,
    plot_learning_curves,
    split_loaders,
    to_markdown,
)
from tlutils.topics.learning_curves import (
    Fitted,
    budget_loader,
    budget_to_reach,
    catch_up_budget,
    checkpoint_arm,
    labels_to_reach,
    mean_and_se,
    run_learning_curve,
    subset_picker,
    train_with_checkpoints,
)
from tlutils.topics.training_cost import (
    epoch_seconds,
    scaling_exponent,
    seconds_per_example,
    state_bytes,
    summarise_time_to_target,
    time_to_target,
    time_to_target_table,
)

matplotlib.use("Agg")


def blobs(n_per_class: int, seed: int, spread: float = 1.0) -> TensorDataset:
    """Three Gaussian blobs in 4-D; a linear head separates them with a few examples."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(3 * n_per_class) % 3
    centres = torch.eye(3, 4) * 3.0
    points = centres[labels] + spread * torch.randn(len(labels), 4, generator=generator)
    return TensorDataset(points, labels)


POOL = blobs(40, seed=0)
POOL_LABELS = POOL.tensors[1].numpy()
VAL = DataLoader(blobs(20, seed=1), batch_size=64)
TEST = DataLoader(blobs(30, seed=2), batch_size=64)
SHIFTED = DataLoader(blobs(30, seed=3, spread=2.5), batch_size=64)


def subset(per_class: int, seed: int) -> TensorDataset:
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(np.flatnonzero(POOL_LABELS == c), per_class, replace=False) for c in range(3)])
    return TensorDataset(*(t[torch.from_numpy(chosen)] for t in POOL.tensors))


def linear_arm(lr: float = 0.05, setup: float = 0.0):
    probe = lambda: LinearProbe(torch.zeros(4), torch.ones(4), 3)  # noqa: E731
    return checkpoint_arm(
        probe, subset, "points", VAL, lr=lr, batch_size=8, checkpoints=4, setup_seconds_per_example=setup, device="cpu"
    )


def test_budget_loader_has_exactly_the_step_budget_and_repeats_with_the_seed():
    tiny = TensorDataset(torch.arange(5).float(), torch.arange(5))
    loader = budget_loader(tiny, batch_size=4, steps=7, seed=3)
    assert len(loader) == 7 and sum(1 for _ in loader) == 7
    first = [batch[1].tolist() for batch in budget_loader(tiny, 4, 7, seed=3)]
    again = [batch[1].tolist() for batch in budget_loader(tiny, 4, 7, seed=3)]
    other = [batch[1].tolist() for batch in budget_loader(tiny, 4, 7, seed=4)]
    assert first == again and first != other
    with pytest.raises(ValueError, match="empty"):
        budget_loader(TensorDataset(torch.zeros(0), torch.zeros(0)), 4, 7, seed=0)


def test_train_with_checkpoints_learns_and_keeps_the_best_checkpoint():
    model = LinearProbe(torch.zeros(4), torch.ones(4), 3)
    model, curve = train_with_checkpoints(
        model, subset(10, 0), VAL, steps=40, checkpoints=4, batch_size=8, lr=0.05, seed=0, device="cpu"
    )
    assert list(curve["step"]) == [10, 20, 30, 40]
    assert curve["seconds"].is_monotonic_increasing and (curve["seconds"] > 0).all()
    assert curve["val"].max() > 0.9
    from tlutils.core.train import evaluate

    assert evaluate(model, VAL, "cpu")["accuracy"] == pytest.approx(curve["val"].max())
    with pytest.raises(ValueError, match="multiple of checkpoints"):
        train_with_checkpoints(model, subset(2, 0), VAL, steps=10, checkpoints=4, batch_size=8, lr=0.05, seed=0)


def test_train_with_checkpoints_takes_an_optimizer_per_run_with_its_own_rates():
    made = []

    def two_rates(model):
        made.append(torch.optim.AdamW([{"params": [model.head.weight], "lr": 0.05},
                                       {"params": [model.head.bias], "lr": 0.0}]))
        return made[-1]

    model = LinearProbe(torch.zeros(4), torch.ones(4), 3)
    bias = model.head.bias.detach().clone()
    model, curve = train_with_checkpoints(model, subset(10, 0), VAL, steps=40, checkpoints=4, batch_size=8, seed=0,
                                          optimizer=two_rates, device="cpu")
    assert len(made) == 1 and curve["val"].max() > 0.9
    assert torch.equal(model.head.bias, bias), "a group at rate 0 must not move"
    for wrong in ({}, {"lr": 0.05, "optimizer": two_rates}):
        with pytest.raises(ValueError, match="exactly one of lr"):
            train_with_checkpoints(model, subset(10, 0), VAL, steps=40, checkpoints=4, batch_size=8, seed=0, **wrong)
    with pytest.raises(ValueError, match="weight decay inside"):
        train_with_checkpoints(model, subset(10, 0), VAL, steps=40, checkpoints=4, batch_size=8, seed=0,
                               optimizer=two_rates, weight_decay=0.01)


def test_checkpoint_arm_passes_the_optimizer_to_every_run():
    calls = []

    def factory(model):
        calls.append(model)
        return torch.optim.AdamW(model.parameters(), lr=0.05)

    arm = checkpoint_arm(lambda: LinearProbe(torch.zeros(4), torch.ones(4), 3), subset, "points", VAL,
                         optimizer=factory, batch_size=8, device="cpu")
    first = arm(Trial(seed=0, budget=Budget(steps=40)), 5)
    arm(Trial(seed=1, budget=Budget(steps=40)), 5)
    assert len(calls) == 2 and calls[0] is not calls[1], "a fresh optimizer for the fresh model of each run"
    assert first.val > 0.9


def test_run_learning_curve_scores_every_split_once_and_builds_paired_comparisons():
    curve = run_learning_curve(
        {"good": linear_arm(0.05), "tiny lr": linear_arm(1e-5)},
        per_class=[1, 5, 20],
        seeds=[0, 1, 2],
        steps=40,
        loaders={"points": {"test": TEST, "shift": SHIFTED}},
        splits=("test", "shift"),
        only={"tiny lr": [1, 20]},
        device="cpu",
        progress=False,
    )
    table = curve.table
    assert len(table) == 3 * (3 + 2) and set(table.columns) >= {"val", "test", "shift", "steps", "seconds"}
    assert set(table.loc[table["approach"] == "tiny lr", "per_class"]) == {1, 20}
    good = curve.summary().loc["good"]["mean"]
    assert good.loc[20] > 0.85 and good.loc[20] >= good.loc[1] - 0.05
    shift = curve.comparison(20, "shift")
    assert shift.table["test"].tolist() == table[table["per_class"] == 20]["shift"].tolist()
    gap, se = curve.comparison(20).paired_difference("good", "tiny lr")
    assert gap > 2 * se > 0
    assert (table["steps"] == 40).all()
    with pytest.raises(KeyError, match="unknown split"):
        curve.comparison(20, "nope")


def test_run_learning_curve_rejects_unknown_arms_in_only():
    with pytest.raises(ValueError, match="do not exist"):
        run_learning_curve(
            {"a": linear_arm()},
            per_class=[1],
            seeds=[0, 1],
            steps=8,
            loaders={"points": {"test": TEST}},
            only={"b": [1]},
            progress=False,
        )


def test_budget_to_reach_interpolates_on_a_log_axis():
    assert budget_to_reach([1, 10, 100], [0.5, 0.7, 0.9], 0.8) == pytest.approx(math.sqrt(1000))
    assert budget_to_reach([1, 10, 100], [0.85, 0.9, 0.95], 0.8) == 1.0
    assert budget_to_reach([1, 10, 100], [0.5, 0.6, 0.7], 0.8) == math.inf
    with pytest.raises(ValueError, match="increasing"):
        budget_to_reach([10, 1], [0.5, 0.6], 0.55)


def fake_curve(scores: dict[str, dict[int, list[float]]]):
    """A LearningCurve built from given test accuracies, without training (for the summaries)."""
    from tlutils.core.compare import Budget, Comparison
    from tlutils.topics.learning_curves import LearningCurve

    comparisons, tables, fitted = {}, {}, {}
    budgets = sorted({n for by_budget in scores.values() for n in by_budget})
    for n in budgets:
        rows = [
            {
                "arm": arm,
                "seed": s,
                "val": acc,
                "test": acc,
                "trainable_params": 1,
                "seconds": 1.0,
                "steps": 10,
                "choice": {},
            }
            for arm, by in scores.items()
            if n in by
            for s, acc in enumerate(by[n])
        ]
        comparisons[n] = Comparison(pd.DataFrame(rows), metric="accuracy", budget=Budget(steps=10))
        tables[n] = pd.DataFrame([{"approach": r["arm"], "seed": r["seed"], "test": r["test"]} for r in rows])
        curve = pd.DataFrame({"step": [5, 10], "seconds": [0.5, 1.0], "val": [0.6, 0.9]})
        fitted[n] = {(r["arm"], r["seed"]): Fitted(nn.Linear(1, 1), "x", curve, 2.0) for r in rows}
    return LearningCurve(comparisons, tables, fitted, ["test"])


def test_labels_to_reach_and_catch_up_budget():
    curve = fake_curve(
        {
            "scratch": {1: [0.3, 0.32, 0.31], 10: [0.6, 0.62, 0.61], 100: [0.9, 0.91, 0.92]},
            "transfer": {1: [0.7, 0.72, 0.71], 10: [0.85, 0.86, 0.84], 100: [0.905, 0.9, 0.91]},
            "fine-tune": {10: [0.9, 0.91, 0.92]},
        }
    )
    needed = labels_to_reach(curve, target=0.8)
    assert "fine-tune" not in needed.index  # a single point has no crossing
    assert needed.loc["transfer", "mean"] < needed.loc["scratch", "mean"] < 100
    assert needed.loc["scratch", "reached"] == 3 and needed.loc["scratch", "se"] > 0
    assert catch_up_budget(curve, "scratch", "transfer") == 100
    assert catch_up_budget(curve, "transfer", "scratch") == 1
    never = fake_curve(
        {"a": {1: [0.1, 0.12, 0.11], 10: [0.2, 0.21, 0.22]}, "b": {1: [0.5, 0.51, 0.52], 10: [0.6, 0.62, 0.61]}}
    )
    assert catch_up_budget(never, "a", "b") is None
    assert labels_to_reach(never, 0.9).loc["a", "mean"] == math.inf


def test_time_to_target_counts_setup_seconds():
    curve = pd.DataFrame({"step": [10, 20, 30], "seconds": [1.0, 2.0, 3.0], "val": [0.5, 0.8, 0.9]})
    assert time_to_target(Fitted(nn.Linear(1, 1), "x", curve, setup_seconds=4.0), 0.75) == {
        "steps": 20.0,
        "seconds": 6.0,
    }
    assert time_to_target(Fitted(nn.Linear(1, 1), "x", curve), 0.95)["steps"] == math.inf
    table = time_to_target_table(fake_curve({"a": {1: [0.5, 0.6]}}), per_class=1, target=0.85)
    assert list(table["steps"]) == [10.0, 10.0] and list(table["seconds"]) == [3.0, 3.0]
    assert table["seconds_per_step"].iloc[0] == pytest.approx(0.1)


def test_mean_and_se_format_and_table_rendering():
    frame = pd.DataFrame({"approach": ["a"] * 3 + ["b"], "value": [1.0, 2.0, 3.0, 5.0]})
    summary = mean_and_se(frame, "value", ["approach"])
    assert summary.loc["a", "mean"] == 2.0 and summary.loc["a", "se"] == pytest.approx(1 / math.sqrt(3))
    assert math.isnan(summary.loc["b", "se"])
    assert format_mean_se(0.91234, 0.0041) == "0.912 ± 0.004"
    assert format_mean_se(math.inf, 0.1) == "not reached" and format_mean_se(3.0, math.nan, 1, " s") == "3.0 s"
    table = guide_table(
        {("data", "images: scratch"): "12 ± 1", ("time", "images: probe"): "2 s"},
        {"data": "large datasets", "time": "long"},
    )
    assert table.loc["data", "the guide says"] == "large datasets" and table.loc["time", "images: scratch"] == "-"
    markdown = to_markdown(table)
    assert markdown.splitlines()[0].startswith("| criterion | the guide says") and "12 ± 1" in markdown
    with pytest.raises(ValueError, match="without a row"):
        guide_table({("speed", "x"): "1"}, {"data": "large"})


def test_plots_return_figures_and_scaling_exponent():
    curve = fake_curve({"scratch": {1: [0.3, 0.32], 10: [0.6, 0.62]}, "fine-tune": {10: [0.9, 0.91]}})
    fig = plot_learning_curves({"toy": curve}, targets={"toy": 0.8})
    assert fig.axes[0].get_xscale() == "log" and len(fig.axes[0].get_legend().get_texts()) == 3
    costs = pd.DataFrame({"approach": ["a"] * 3, "examples": [10, 100, 1000], "seconds": [0.1, 1.0, 10.0]})
    assert plot_cost_scaling(costs).axes[0].get_yscale() == "log"
    assert scaling_exponent([10, 100, 1000], [0.1, 1.0, 10.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two different"):
        scaling_exponent([10, 10], [1.0, 2.0])


def test_small_image_cnn_learns_and_epoch_seconds_and_state_bytes():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    images = torch.randn(64, 1, 12, 12, generator=generator) * 0.3 + labels[:, None, None, None].float()
    model = SmallImageCNN(num_classes=2)
    _, curve = train_with_checkpoints(
        model,
        TensorDataset(images, labels),
        DataLoader(TensorDataset(images, labels), batch_size=64),
        steps=30,
        checkpoints=3,
        batch_size=16,
        lr=3e-3,
        seed=0,
        device="cpu",
    )
    assert curve["val"].iloc[-1] > 0.9
    assert epoch_seconds(SmallImageCNN(2), TensorDataset(images, labels), batch_size=16, device="cpu") > 0
    with pytest.raises(ValueError, match="N x C x H x W"):
        model(torch.zeros(2, 12, 12))
    head = nn.Linear(3, 2)
    assert state_bytes(head) == 4 * 8
    head.weight.requires_grad_(False)
    assert state_bytes(head) == 4 * 2 and state_bytes(head, trainable_only=False) == 32


def test_arm_outcome_records_checkpoint_setup_and_trainable_parameters():
    from tlutils.core.compare import Budget, Trial

    outcome = linear_arm(setup=0.5)(Trial(seed=0, budget=Budget(steps=20)), 5)
    assert isinstance(outcome, Outcome) and outcome.steps == 20 and outcome.trainable_params == 4 * 3 + 3
    assert outcome.predictor.setup_seconds == pytest.approx(0.5 * 15)
    assert outcome.choice["checkpoint"] in (5, 10, 15, 20)


def test_disjoint_balanced_sets_never_overlap_and_are_balanced():
    labels = np.repeat([0, 1, 2], 10)
    pool, val = disjoint_balanced(labels, [6, 3], seed=0)
    assert len(set(pool) & set(val)) == 0
    assert np.bincount(labels[pool]).tolist() == [6, 6, 6] and np.bincount(labels[val]).tolist() == [3, 3, 3]
    assert [a.tolist() for a in disjoint_balanced(labels, [6, 3], seed=0)] == [pool.tolist(), val.tolist()]
    with pytest.raises(ValueError, match="fewer than the 11"):
        disjoint_balanced(labels, [6, 5], seed=0)


def test_cross_budget_comparison_pairs_by_seed_and_seconds_per_example():
    from tlutils.core.compare import assert_better

    curve = fake_curve(
        {"scratch": {10: [0.5, 0.52, 0.51], 100: [0.8, 0.82, 0.81]}, "transfer": {10: [0.9, 0.91, 0.93]}}
    )
    paired = cross_budget_comparison(curve, ("transfer", 10), ("scratch", 100))
    assert paired.arms == ("transfer @ 10", "scratch @ 100")
    gap, _ = assert_better(paired, "transfer @ 10", "scratch @ 100")
    assert gap == pytest.approx(0.31 / 3)
    with pytest.raises(KeyError, match="was not run"):
        cross_budget_comparison(curve, ("transfer", 100), ("scratch", 10))
    assert seconds_per_example(lambda x: x * 2, torch.zeros(10)) > 0


def test_subset_picker_gives_the_same_examples_in_every_representation():
    labels = np.repeat([0, 1], 8)
    features, pixels = torch.arange(16.0)[:, None], torch.arange(16.0)[:, None, None] * 10
    pick_features, pick_pixels = subset_picker(features, labels), subset_picker(pixels, labels)
    a, b = pick_features(3, seed=5), pick_pixels(3, seed=5)
    assert len(a) == 6 and torch.equal(a.tensors[0].flatten() * 10, b.tensors[0].flatten())
    assert np.bincount(a.tensors[1].numpy()).tolist() == [3, 3]
    subset = subset_picker(TensorDataset(features, torch.from_numpy(labels)), labels)(3, seed=5)
    assert [int(subset[i][0]) for i in range(6)] == a.tensors[0].flatten().int().tolist()
    with pytest.raises(ValueError, match="inputs but"):
        subset_picker(features[:3], labels)
    loaders = split_loaders({"test": (features, labels)}, batch_size=4)
    assert len(loaders["test"]) == 4


def test_steps_per_budget_must_cover_every_point():
    with pytest.raises(ValueError, match="no budget for"):
        run_learning_curve(
            {"a": linear_arm()},
            per_class=[1, 5],
            seeds=[0, 1],
            steps={1: 8},
            loaders={"points": {"test": TEST}},
            progress=False,
        )


def test_summarise_time_to_target_averages_the_seeds_that_reached_it():
    table = pd.DataFrame(
        {
            "modality": ["m"] * 4,
            "approach": ["a", "a", "a", "b"],
            "seed": [0, 1, 2, 0],
            "steps": [10.0, 20.0, math.inf, math.inf],
            "seconds": [1.0, 3.0, math.inf, math.inf],
            "seconds_per_step": [0.1, 0.1, 0.1, 0.2],
        }
    )
    summary = summarise_time_to_target(table, by=("modality", "approach"))
    assert summary.loc[("m", "a"), "reached"] == 2 and summary.loc[("m", "a"), "seconds_mean"] == 2.0
    assert summary.loc[("m", "a"), "seconds_se"] == pytest.approx(1.0)
    assert summary.loc[("m", "b"), "seconds_mean"] == math.inf and summary.loc[("m", "b"), "reached"] == 0
    assert summarise_time_to_target(table).loc["a", "steps_mean"] == 15.0
