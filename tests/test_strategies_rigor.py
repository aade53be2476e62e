"""The strategies as arms of the comparison protocol: equal step budgets, choices on validation only."""

import copy

import pandas as pd
import pytest
import torch

from tests.helpers import TinyNet, toy_loader
from tlutils.core.compare import Budget, Comparison, compare
from tlutils.core.runtime import set_seed
from tlutils.core.train import evaluate
from tlutils.course.strategy_table import (
    StrategyBench,
    paired_gaps,
    pick_on_validation,
    plot_strategy_comparison,
    strategy_arm,
    strategy_table,
)
from tlutils.topics.regularizers import snapshot_weights
from tlutils.topics.strategies import feature_extraction

CPU = torch.device("cpu")


def test_feature_extraction_with_a_step_budget_ignores_the_set_size(temp_cache):
    for n in (12, 48):
        set_seed(0)
        run = feature_extraction(TinyNet(), toy_loader(n, shuffle=False), toy_loader(shuffle=False), epochs=2,
                                 lr=5e-2, device=CPU, steps=10)
        assert run.stages[0][1].steps == 10 and len(run.stages[0][1].epochs) == 2
    with pytest.raises(ValueError, match="multiple"):
        feature_extraction(TinyNet(), toy_loader(shuffle=False), toy_loader(shuffle=False), epochs=3, lr=1e-2,
                           device=CPU, steps=10)


def _bench(n: int = 48) -> StrategyBench:
    fixed = toy_loader(n, shuffle=False)
    set_seed(0)
    pretrained = TinyNet()  # stands in for a pre-trained network: every arm starts from these weights
    return StrategyBench(lambda: copy.deepcopy(pretrained), fixed.dataset, fixed, toy_loader(shuffle=False, seed=1),
                         steps=8, checkpoints=2, batch_size=8, lr=3e-2, head_lr=5e-2, probe_steps=6,
                         cache_name=f"test_bench_{n}", pretrained=snapshot_weights(pretrained), device=CPU,
                         verbose=False)


def test_every_arm_trains_the_same_body_steps_and_is_scored_by_the_protocol(temp_cache):
    bench = _bench()
    arms = {"feature extraction": strategy_arm(bench, "feature extraction"),
            "partial (last 1 blocks)": strategy_arm(bench, "partial", blocks=1),
            "full fine-tuning": strategy_arm(bench, "full"),
            "layer-wise decay 0.5": strategy_arm(bench, "layer-wise", decay=0.5),
            "gradual unfreezing": strategy_arm(bench, "gradual", schedule=[0, 1, 2, 2], lrs=3e-2),
            "LP-FT": strategy_arm(bench, "lp-ft")}
    test_loader = toy_loader(shuffle=False, seed=2)
    result = compare(arms, seeds=[0, 1], budget=Budget(steps=bench.steps), progress=False,
                     score_test=lambda outcome: evaluate(outcome.predictor, test_loader, CPU)["accuracy"])
    steps = result.table.set_index("arm")["steps"]
    assert steps.drop("feature extraction").eq(8).all() and steps["feature extraction"].eq(0).all()
    assert result.table.set_index("arm").loc["LP-FT", "choice"].iloc[0]["head steps on cached features"] == 6
    table = strategy_table([result], bench)
    assert list(table.index) == list(arms)
    assert table.loc["feature extraction", "body_distance"] == 0.0 < table.loc["full fine-tuning", "body_distance"]
    assert table["seeds"].eq(2).all() and table["val_mean"].between(0, 1).all()
    assert len(plot_strategy_comparison(table).axes) == 3
    with pytest.raises(ValueError, match="unknown strategy"):
        strategy_arm(bench, "scratch")


def _comparison(val: dict, test: dict, seconds: dict) -> Comparison:
    rows = [{"arm": arm, "seed": seed, "val": val[arm][seed], "test": test[arm][seed], "trainable_params": 1,
             "seconds": seconds[arm], "steps": 1, "choice": {}} for arm in val for seed in range(3)]
    return Comparison(pd.DataFrame(rows), metric="accuracy", budget=Budget(steps=1))


def test_the_pick_is_read_from_validation_and_ignores_test():
    result = _comparison(val={"slow": [0.80, 0.82, 0.78], "fast": [0.79, 0.82, 0.78], "bad": [0.5, 0.52, 0.5]},
                         test={"slow": [0.7] * 3, "fast": [0.7] * 3, "bad": [0.99] * 3},
                         seconds={"slow": 10.0, "fast": 1.0, "bad": 0.1})
    reading = pick_on_validation(result)
    assert reading["best"] == "slow" and set(reading["tied"]) == {"slow", "fast"} and reading["pick"] == "fast"


def test_paired_gaps_are_per_seed_and_per_key():
    first = _comparison({"a": [0.6, 0.7, 0.8], "b": [0.5, 0.5, 0.5]}, {"a": [0.6, 0.7, 0.8], "b": [0.5, 0.5, 0.5]},
                        {"a": 1.0, "b": 1.0})
    second = _comparison({"a": [0.9] * 3, "b": [0.5] * 3}, {"a": [0.9] * 3, "b": [0.4] * 3}, {"a": 1.0, "b": 1.0})
    gaps = paired_gaps({10: first, 40: second}, "a", "b")
    assert gaps.shape == (3, 2)
    assert gaps[10].round(6).tolist() == [0.1, 0.2, 0.3] and gaps[40].round(6).tolist() == [0.5] * 3


def test_the_pick_can_use_a_cost_that_does_not_vary_between_runs():
    result = _comparison(val={"slow": [0.80, 0.82, 0.78], "fast": [0.79, 0.82, 0.78], "bad": [0.5, 0.52, 0.5]},
                         test={"slow": [0.7] * 3, "fast": [0.7] * 3, "bad": [0.99] * 3},
                         seconds={"slow": 10.0, "fast": 1.0, "bad": 0.1})
    assert pick_on_validation(result, cost={"slow": 1.0, "fast": 5.0, "bad": 0.0})["pick"] == "slow"
    with pytest.raises(ValueError, match="no entry for"):
        pick_on_validation(result, cost={"slow": 1.0})


def test_step_flops_count_depthwise_backward_and_stop_at_the_frozen_body():
    from torch import nn

    from tlutils.topics.strategies import forward_flops, training_step_flops

    depthwise = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    inputs, targets = torch.randn(2, 4, 6, 6), torch.tensor([0, 2])
    conv = 2 * 2 * 4 * 6 * 6 * 9              # 2 x output elements x (1 input channel per group x 3 x 3)
    linear = 2 * 2 * (4 * 6 * 6) * 3
    assert forward_flops(depthwise, inputs) == conv + linear
    # forward + conv weight gradient (no input gradient: the input needs none) + both linear gradients
    assert training_step_flops(depthwise, inputs, targets) == 2 * conv + 3 * linear
    depthwise[0].requires_grad_(False)        # frozen conv: the backward pass stops at the linear layer
    assert training_step_flops(depthwise, inputs, targets) == conv + 2 * linear
    with pytest.raises(ValueError, match="requires a gradient"):
        training_step_flops(depthwise.requires_grad_(False), inputs, targets)


def test_step_flops_take_a_keyword_batch_like_a_tokenised_text_batch():
    from torch import nn

    from tlutils.topics.strategies import training_step_flops

    class Keyworded(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(5, 2)

        def forward(self, input_ids, attention_mask):
            return self.linear(input_ids * attention_mask)

    batch = {"input_ids": torch.randn(3, 5), "attention_mask": torch.ones(3, 5)}
    # forward + weight gradient (the inputs need none)
    assert training_step_flops(Keyworded(), batch, torch.tensor([0, 1, 1])) == 2 * (2 * 3 * 5 * 2)


def test_run_flops_adds_the_probe_and_the_extraction():
    from tlutils.course.strategy_table import run_flops

    step = {"feature extraction": 1, "partial (last 2 blocks)": 10, "full fine-tuning": 30}
    cost = run_flops(step, steps=4, probe_steps=100, extraction=50)
    assert cost == {"feature extraction": 150, "partial (last 2 blocks)": 40, "full fine-tuning": 120, "LP-FT": 270}
    with pytest.raises(ValueError, match="steps must be positive"):
        run_flops(step, steps=0, probe_steps=1, extraction=0)
