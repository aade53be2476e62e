"""The comparison protocol: equal budgets, choices on validation, test scored once, honest claims."""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections import Counter

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import tlutils.core.compare as compare_module
from tlutils.core.compare import (
    Budget,
    BudgetError,
    Comparison,
    Outcome,
    Trial,
    assert_better,
    assert_tied,
    best_on_validation,
    compare,
)

matplotlib.use("Agg")


def blobs(n: int, seed: int) -> TensorDataset:
    """Two well separated Gaussian blobs in 2-D: a logistic regression gets them right in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    points = torch.randn(n, 2, generator=generator) * 0.5 + (labels[:, None].float() * 2 - 1) * 2.0
    return TensorDataset(points, labels)


TRAIN, VAL, TEST = blobs(64, seed=100), blobs(32, seed=101), blobs(32, seed=102)


def accuracy(predict, dataset: TensorDataset) -> float:
    points, labels = dataset.tensors
    return float((predict(points) == labels).float().mean())


def score_test(outcome: Outcome) -> float:
    return accuracy(outcome.predictor, TEST)


def logistic_regression(trial: Trial, lr: float = 0.5) -> Outcome:
    """Train a linear classifier for the whole step budget with a plain loop."""
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loader = trial.loader(TRAIN, batch_size=16)
    steps = 0
    for _ in range(trial.epochs_for(loader)):
        for points, labels in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(points), labels).backward()
            optimizer.step()
            steps += 1

    def predict(points):
        with torch.no_grad():
            return model(points).argmax(dim=1)

    return Outcome(predict, val=accuracy(predict, VAL), steps=steps,
                   trainable_params=sum(p.numel() for p in model.parameters()))


def constant(trial: Trial) -> Outcome:
    """Always predicts class 0: about half right on balanced data."""
    def predict(points):
        return torch.zeros(len(points), dtype=torch.long)

    return Outcome(predict, val=accuracy(predict, VAL), steps=0, trainable_params=0)


def fixed(val: float, test: float):
    """An arm with given validation and test scores (the predictor *is* its test score)."""
    return lambda trial: Outcome(predictor=test, val=val, steps=0, trainable_params=0)


def table(rows: list[tuple[str, int, float, float]]) -> pd.DataFrame:
    """A results table from (arm, seed, val, test) rows."""
    return pd.DataFrame([{"arm": arm, "seed": seed, "val": val, "test": test, "trainable_params": 0,
                          "seconds": 0.0, "steps": 0, "choice": {}} for arm, seed, val, test in rows])


BUDGET = Budget(steps=30)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small train faster on one thread, and do not slow down when the CPUs are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def learned_vs_constant() -> Comparison:
    return compare({"logreg": logistic_regression, "constant": constant}, seeds=[0, 1, 2], budget=BUDGET,
                   score_test=score_test, progress=False)


def test_a_known_better_arm_passes_assert_better_and_not_the_other_way(learned_vs_constant):
    gap, se = assert_better(learned_vs_constant, "logreg", "constant")
    assert gap > 0.3 and gap > 2 * se
    with pytest.raises(AssertionError, match="does not hold"):
        assert_better(learned_vs_constant, "constant", "logreg")
    with pytest.raises(AssertionError, match="not tied"):
        assert_tied(learned_vs_constant, "logreg", "constant")


def test_the_table_is_tidy_and_the_step_budget_is_kept(learned_vs_constant):
    frame = learned_vs_constant.table
    assert list(frame.columns) == ["arm", "seed", "val", "test", "trainable_params", "seconds", "steps", "choice"]
    assert len(frame) == 6 and set(frame["seed"]) == {0, 1, 2}
    assert (frame.loc[frame["arm"] == "logreg", "steps"] == 28).all()  # 7 whole epochs of 4 batches fit 30 steps
    assert (frame.loc[frame["arm"] == "logreg", "trainable_params"] == 6).all()
    assert list(learned_vs_constant.summary().index) == ["logreg", "constant"]


def test_identical_arms_are_tied_and_neither_beats_the_other():
    result = compare({"a": logistic_regression, "b": logistic_regression}, seeds=[0, 1, 2], budget=BUDGET,
                     score_test=score_test, progress=False)
    assert assert_tied(result, "a", "b") == (0.0, 0.0)
    with pytest.raises(AssertionError, match="does not hold"):
        assert_better(result, "a", "b")


def test_a_gap_within_the_noise_is_not_a_win():
    rows = [("a", 0, 0.5, 0.80), ("a", 1, 0.5, 0.70), ("a", 2, 0.5, 0.75),
            ("b", 0, 0.5, 0.70), ("b", 1, 0.5, 0.74), ("b", 2, 0.5, 0.76)]
    result = Comparison(table(rows), metric="accuracy", budget=BUDGET)
    with pytest.raises(AssertionError, match="within the noise"):
        assert_better(result, "a", "b")
    assert_tied(result, "a", "b")


def test_an_arm_over_the_step_budget_raises_budget_error():
    def greedy(trial):
        return Outcome(None, val=1.0, steps=trial.budget.steps + 1, trainable_params=1)

    with pytest.raises(BudgetError, match=r"'greedy' \(seed 1\) used 31 .*budget of 30"):
        compare({"fair": constant, "greedy": greedy}, seeds=[1], budget=BUDGET, score_test=score_test,
                progress=False)
    assert issubclass(BudgetError, ValueError)


def test_score_test_runs_once_per_arm_and_seed_and_arms_get_no_test_data():
    scored, trials, batch_orders = [], [], {}

    def arm(name):
        def run(trial):
            trials.append(trial)
            assert (name, trial.seed) not in scored  # the arm never sees its test score
            batch_orders[name, trial.seed] = [labels.tolist() for _, labels in trial.loader(TRAIN, batch_size=16)]
            return Outcome(predictor=(name, trial.seed), val=0.5, steps=0, trainable_params=0)
        return run

    def count_and_score(outcome):
        scored.append(outcome.predictor)
        return 0.5

    compare({"x": arm("x"), "y": arm("y")}, seeds=[0, 1, 2], budget=BUDGET, score_test=count_and_score,
            progress=False)
    assert Counter(scored) == {(name, seed): 1 for name in "xy" for seed in (0, 1, 2)}
    assert {f.name for f in dataclasses.fields(Trial)} == {"seed", "budget", "started"}
    assert all(set(vars(trial)) == {"seed", "budget", "started"} and trial.budget == BUDGET for trial in trials)
    assert all(batch_orders["x", seed] == batch_orders["y", seed] for seed in (0, 1, 2))


def test_best_chooses_on_validation_and_refuses_test():
    arms = {"good_val": fixed(val=0.9, test=0.5), "good_test": fixed(val=0.6, test=0.8)}
    result = compare(arms, seeds=[0, 1], budget=BUDGET, score_test=lambda outcome: outcome.predictor,
                     progress=False)
    assert result.summary().loc["good_test", "test_mean"] > result.summary().loc["good_val", "test_mean"]
    assert result.best() == "good_val"
    with pytest.raises(ValueError, match="choices are made on the validation split"):
        result.best(on="test")


def test_loader_order_depends_on_the_seed_only():
    dataset = TensorDataset(torch.arange(40))

    def order(trial):
        loader = trial.loader(dataset, batch_size=8)
        return [batch.tolist() for _ in range(2) for (batch,) in loader]  # two epochs

    first, second, other = order(Trial(0, BUDGET)), order(Trial(0, BUDGET)), order(Trial(1, BUDGET))
    assert first == second
    assert first != other
    assert first[:5] != first[5:]  # each epoch is reshuffled
    assert order(Trial(0, BUDGET)) == first  # the global RNG does not matter
    torch.rand(3)
    assert order(Trial(0, BUDGET)) == first


def test_epochs_for_and_deadline_follow_the_budget():
    loader = Trial(0, Budget(steps=10)).loader(TensorDataset(torch.arange(20)), batch_size=5)  # 4 batches
    assert Trial(0, Budget(steps=10)).epochs_for(loader) == 2
    assert Trial(0, Budget(steps=4)).epochs_for(loader) == 1
    with pytest.raises(ValueError, match="one epoch is 4 steps"):
        Trial(0, Budget(steps=3)).epochs_for(loader)
    with pytest.raises(ValueError, match="needs a steps budget"):
        Trial(0, Budget(seconds=1.0)).epochs_for(loader)
    trial = Trial(0, Budget(seconds=2.0))
    assert trial.deadline() == pytest.approx(trial.started + 2.0)
    with pytest.raises(ValueError, match="needs a seconds budget"):
        Trial(0, BUDGET).deadline()


def test_budget_needs_exactly_one_limit():
    assert Budget(steps=300).describe() == "300 optimizer steps"
    assert "seconds" in Budget(seconds=1.5).describe()
    for bad in ({}, {"steps": 10, "seconds": 1.0}, {"steps": 0}, {"seconds": -1.0}):
        with pytest.raises(ValueError):
            Budget(**bad)


def test_a_seconds_budget_records_time_and_warns_on_overrun():
    def on_time(trial):
        while time.perf_counter() < trial.deadline():
            pass
        return Outcome(None, val=0.5, steps=3, trainable_params=0)

    def slow(trial):
        time.sleep(0.1)
        return Outcome(None, val=0.5, steps=1, trainable_params=0)

    budget = Budget(seconds=0.02)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compare({"on_time": on_time}, seeds=[0], budget=budget, score_test=lambda o: 0.5, progress=False)
    assert result.table.loc[0, "seconds"] >= 0.02
    with pytest.warns(UserWarning, match="'slow' \\(seed 0\\) took"):
        compare({"slow": slow}, seeds=[0], budget=budget, score_test=lambda o: 0.5, progress=False)


def test_best_on_validation_keeps_the_best_option_and_sums_the_steps():
    def run(lr):
        return Outcome(predictor=lr, val=-(lr - 0.5) ** 2, steps=10, trainable_params=6, choice={"epoch": 3})

    best = best_on_validation([0.1, 0.5, 0.3], run, name="lr")
    assert best.predictor == 0.5 and best.steps == 30
    assert best.choice == {"epoch": 3, "lr": 0.5}
    tie = best_on_validation(["first", "second"], lambda option: Outcome(option, 1.0, 1, 0))
    assert tie.choice == {"option": "first"}
    with pytest.raises(ValueError):
        best_on_validation([], run)


def test_summary_matches_a_hand_computation_and_differences_are_paired():
    # Seeds move both arms together; "a" is ahead by about 0.02 on every seed.
    rows = [("a", 2, 0.70, 0.72), ("b", 0, 0.80, 0.80), ("a", 0, 0.90, 0.82), ("b", 2, 0.60, 0.69),
            ("a", 1, 0.50, 0.61), ("b", 1, 0.40, 0.60)]  # shuffled: pairing must be by seed, not by row
    result = Comparison(table(rows), metric="accuracy", budget=BUDGET)
    a, b = np.array([0.82, 0.61, 0.72]), np.array([0.80, 0.60, 0.69])  # seeds 0, 1, 2

    def se(values):
        return values.std(ddof=1) / math.sqrt(len(values))

    summary = result.summary(reference="b")
    assert list(summary.index) == ["a", "b"]
    assert summary.loc["a", "n"] == 3
    assert summary.loc["a", "test_mean"] == pytest.approx(a.mean())
    assert summary.loc["a", "test_se"] == pytest.approx(se(a))
    assert summary.loc["b", "val_mean"] == pytest.approx(np.mean([0.80, 0.40, 0.60]))
    assert summary.loc["b", "val_se"] == pytest.approx(se(np.array([0.80, 0.40, 0.60])))
    assert summary.loc["a", "diff_mean"] == pytest.approx((a - b).mean())
    assert summary.loc["a", "diff_se"] == pytest.approx(se(a - b))
    assert (summary.loc["b", "diff_mean"], summary.loc["b", "diff_se"]) == (0.0, 0.0)
    unpaired = math.sqrt(se(a) ** 2 + se(b) ** 2)
    assert se(a - b) < unpaired / 5  # pairing matters here ...
    assert assert_better(result, "a", "b") == pytest.approx(((a - b).mean(), se(a - b)))  # ... and makes the claim
    with pytest.raises(ValueError, match="unknown arm 'c'; the arms are: 'a', 'b'"):
        result.summary(reference="c")


def test_save_writes_json_and_rejects_paths(tmp_path, monkeypatch, learned_vs_constant):
    path = learned_vs_constant.save("logreg_vs_constant", folder=tmp_path)
    assert path == tmp_path / "logreg_vs_constant.json"
    data = json.loads(path.read_text())
    assert data["arms"] == ["logreg", "constant"] and data["budget"] == {"steps": 30, "seconds": None}
    assert len(data["rows"]) == 6 and len(data["summary"]) == 2
    loaded = Comparison.load("logreg_vs_constant", folder=tmp_path)
    pd.testing.assert_frame_equal(loaded.summary(), learned_vs_constant.summary())
    for bad in ("a/b", "../escape", "..", "x.json", ""):
        with pytest.raises(ValueError, match="plain file stem"):
            learned_vs_constant.save(bad, folder=tmp_path)
    monkeypatch.setattr(compare_module, "project_root", lambda: tmp_path)
    assert learned_vs_constant.save("default") == tmp_path / "data" / "results" / "default.json"


def test_seeded_runs_give_identical_tables_and_leave_the_global_rng_alone():
    def run():
        return compare({"logreg": logistic_regression, "constant": constant}, seeds=[3, 4], budget=BUDGET,
                       score_test=score_test, progress=False).table.drop(columns="seconds")

    torch.manual_seed(123)
    first = run()
    after = torch.rand(1)
    torch.manual_seed(123)
    pd.testing.assert_frame_equal(first, run())
    assert torch.equal(torch.rand(1), after)


def test_claims_need_two_seeds_and_known_arms():
    result = compare({"a": constant, "b": constant}, seeds=[0], budget=BUDGET, score_test=score_test,
                     progress=False)
    with pytest.raises(ValueError, match="two seeds"):
        assert_better(result, "a", "b")
    with pytest.raises(ValueError, match="two seeds"):
        assert_tied(result, "a", "b")
    with pytest.raises(ValueError, match="unknown arm"):
        result.paired_difference("a", "nope")


def test_compare_checks_its_inputs():
    arms = {"a": constant}
    with pytest.raises(ValueError, match="at least one seed"):
        compare(arms, seeds=[], budget=BUDGET, score_test=score_test, progress=False)
    with pytest.raises(ValueError, match="distinct"):
        compare(arms, seeds=[0, 0], budget=BUDGET, score_test=score_test, progress=False)
    with pytest.raises(ValueError, match="at least one arm"):
        compare({}, seeds=[0], budget=BUDGET, score_test=score_test, progress=False)
    with pytest.raises(TypeError, match="must return an Outcome"):
        compare({"a": lambda trial: 0.9}, seeds=[0], budget=BUDGET, score_test=score_test, progress=False)


def test_plot_and_html_show_every_arm(learned_vs_constant):
    import matplotlib.pyplot as plt

    fig = learned_vs_constant.plot(title="logreg vs constant")
    labels = [tick.get_text() for tick in fig.axes[0].get_yticklabels()]
    assert labels == ["logreg", "constant"]
    plt.close(fig)
    html = learned_vs_constant._repr_html_()
    assert "logreg" in html and "constant" in html and "<table" in html


def test_claim_verdict_says_tie_inside_the_noise():
    from tlutils.core.compare import claim_verdict
    from tests.test_learning_curves import fake_curve

    curve = fake_curve({"a": {10: [0.80, 0.90, 0.70]}, "b": {10: [0.78, 0.71, 0.74]},
                        "c": {10: [0.60, 0.61, 0.62]}})
    tie = claim_verdict(curve.comparison(10), "a", "b")
    assert tie["verdict"] == "tie" and "tied with" in tie["text"]
    better = claim_verdict(curve.comparison(10), "b", "c")
    assert better["verdict"] == "better" and better["gap"] > 2 * better["se"]
    assert claim_verdict(curve.comparison(10), "c", "b")["verdict"] == "worse"


def test_gap_verdict_counts_only_gaps_beyond_the_noise():
    from tlutils.core.compare import gap_verdict

    assert gap_verdict(0.05, 0.01) == "better" and gap_verdict(-0.05, 0.01) == "worse"
    assert gap_verdict(0.015, 0.01) == "tie" and gap_verdict(0.015, 0.01, z=1.0) == "better"
    assert gap_verdict(0.001, float("nan")) == "better"   # one seed: no SE, any gap counts
    with pytest.raises(ValueError, match="z must be positive"):
        gap_verdict(0.1, 0.01, z=0)
