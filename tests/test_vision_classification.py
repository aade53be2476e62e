"""Notebook 05's helpers: the fine-tuning recipe, the from-scratch rate chosen on validation, the lesion table."""

import numpy as np
import pytest
import torch

from tests.helpers import TinyNet, toy_loader
from tlutils.core.metrics import screening_scores
from tlutils.course.vision_classification import (
    finetune_image_classifier,
    lesion_comparison,
    scratch_rate_on_validation,
)


def test_screening_scores_counts_each_error_against_its_class():
    scores = screening_scores([1, 1, 1, 0, 0], [1, 0, 1, 1, 0], positive=1)
    assert scores["sensitivity"] == pytest.approx(2 / 3) and scores["specificity"] == pytest.approx(1 / 2)
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert np.isnan(screening_scores([0, 0], [0, 1], positive=1)["sensitivity"])   # no positives at all
    with pytest.raises(ValueError, match="one prediction per example"):
        screening_scores([0, 1], [0], positive=1)


def test_finetune_image_classifier_is_seeded_and_sets_the_head():
    first, history = finetune_image_classifier(TinyNet, toy_loader(), num_classes=5, epochs=1, lr=1e-2, seed=3)
    second, _ = finetune_image_classifier(TinyNet, toy_loader(), num_classes=5, epochs=1, lr=1e-2, seed=3)
    assert first.classifier[-1].out_features == 5 and history.steps == 6
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_scratch_rate_is_chosen_on_validation_and_the_search_counts_its_steps():
    train, val = toy_loader(seed=0), toy_loader(seed=1, shuffle=False)
    outcome, histories, table = scratch_rate_on_validation(TinyNet, train, val, toy_loader(seed=0, shuffle=False),
                                                           (1e-4, 5e-2), num_classes=3, epochs=2, seed=0)
    assert set(histories) == {1e-4, 5e-2} and list(table.columns) == ["as trained", "recalibrated"]
    assert outcome.choice["lr"] == table["recalibrated"].idxmax()
    assert outcome.val == table.loc[outcome.choice["lr"], "recalibrated"]
    assert outcome.steps == sum(h.steps for h in histories.values())
    with pytest.raises(ValueError, match="rates is empty"):
        scratch_rate_on_validation(TinyNet, train, val, train, (), num_classes=3, epochs=1, seed=0)


def test_lesion_comparison_reports_a_screening_row_per_network():
    data = [(x, y) for x, y in toy_loader(n=32, num_classes=2, shuffle=False).dataset]
    x = torch.stack([d[0] for d in data])
    y = torch.stack([d[1] for d in data])
    table, models = lesion_comparison({"a": TinyNet, "b": TinyNet}, x, y, x, y, positive=1, epochs=1, lr=1e-2,
                                      batch_size=8, seed=0)
    assert list(table.index) == ["a", "b"] and set(models) == {"a", "b"}
    assert {"test accuracy", "sensitivity", "specificity", "train seconds"} <= set(table.columns)
    assert table[["test accuracy", "sensitivity", "specificity"]].apply(lambda c: c.between(0, 1)).all().all()


def test_pretrained_vs_scratch_runs_both_arms_per_seed_within_the_budget():
    from torch.utils.data import TensorDataset

    from tlutils.course.vision_classification import PRETRAINED, SCRATCH, pretrained_vs_scratch

    data = toy_loader(n=24, shuffle=False)
    train_set = TensorDataset(*data.dataset.tensors)
    comparison, histories, bn_tables = pretrained_vs_scratch(
        lambda pretrained: TinyNet(), train_set, data, data, data, lr=1e-2, rates=(1e-3, 1e-2), epochs=1,
        batch_size=8, num_classes=3, seeds=[0, 1], progress=False)
    assert list(comparison.arms) == [PRETRAINED, SCRATCH] and set(bn_tables) == {0, 1}
    assert set(histories) == {(arm, seed) for arm in (PRETRAINED, SCRATCH) for seed in (0, 1)}
    steps = comparison.table.set_index("arm")["steps"]
    assert (steps[SCRATCH] == 2 * 3).all() and (steps[PRETRAINED] == 3).all()   # the search counts
