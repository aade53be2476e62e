"""penalty_arm (notebook 03, section 6): alpha chosen on validation, steps summed, every run logged."""

import torch
from torch import nn

from tlutils.core.compare import Budget, Trial, compare
from tlutils.course.mathematics import penalty_arm


class _History:
    def __init__(self, val: float, steps: int):
        self._val, self.steps = val, steps

    def last(self, key: str) -> float:
        assert key == "val_accuracy"
        return self._val


def _fake_fine_tune(penalty, alpha, seed):
    """A linear 'model' moved by alpha from its start; validation accuracy peaks at alpha = 1."""
    model = nn.Linear(2, 1)
    start = {name: param.detach().clone() for name, param in model.named_parameters()}
    with torch.no_grad():
        model.weight.add_(alpha)
    return model, start, _History(val=1.0 - abs(alpha - 1.0) / 10 + seed / 1000, steps=5)


def test_penalty_arm_chooses_on_validation_and_logs_every_run():
    log = []
    outcome = penalty_arm(_fake_fine_tune, "l2_sp", [0.1, 1.0, 3.0], log)(Trial(seed=2, budget=Budget(steps=15)))
    assert outcome.choice == {"alpha": 1.0}
    assert outcome.steps == 15 and outcome.trainable_params == 3
    assert [row["alpha"] for row in log] == [0.1, 1.0, 3.0]
    assert {row["seed"] for row in log} == {2} and {row["penalty"] for row in log} == {"l2_sp"}
    # the body distance is ||w - w0|| over the weight (2 entries moved by alpha), here no classifier
    assert abs(log[1]["body_distance"] - 2 ** 0.5) < 1e-6


def test_penalty_arms_run_through_compare():
    log = []
    arms = {"none": penalty_arm(_fake_fine_tune, "none", [0.0], log),
            "l2_sp": penalty_arm(_fake_fine_tune, "l2_sp", [0.1, 1.0], log)}
    result = compare(arms, seeds=[0, 1, 2], budget=Budget(steps=10), score_test=lambda outcome: outcome.val,
                     progress=False)
    gap, se = result.paired_difference("l2_sp", "none")
    assert abs(gap - 0.1) < 1e-9 and se < 1e-9
    assert len(log) == 3 * 3
