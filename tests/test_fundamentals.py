"""Notebook 01's six set-ups as protocol arms: seeded draws, choices on validation, test never seen by an arm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tlutils.core.compare import Budget, compare
from tlutils.course.fundamentals import SETUPS, DigitTask, digit_arms


def clustered(n_per_class: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Ten Gaussian clusters in 12-D, one per class; ``shift`` moves a whole domain."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    centres = np.random.default_rng(99).normal(size=(10, 12)) * 3
    return centres[labels] + rng.normal(size=(len(labels), 12)) + shift, labels


def toy_task(poison_test: bool = False) -> tuple[DigitTask, np.ndarray]:
    features, labels = clustered(30, seed=0, shift=0.5)
    order = np.random.default_rng(1).permutation(len(labels))
    pool, val, test = np.sort(order[:120]), np.sort(order[120:180]), np.sort(order[180:])
    if poison_test:
        features = features.copy()
        features[test] = np.nan  # an arm that reads a test feature fails loudly
    images = np.repeat(np.nan_to_num(features)[:, None, :], 12, axis=1).astype(np.float32)  # N x 12 x 12 "images"
    source, source_labels = clustered(20, seed=2)
    source_val, source_val_labels = clustered(5, seed=3)
    task = DigitTask(features, images, labels, pool, val, source={"raw": source, "rendered": source + 0.25},
                     source_labels=source_labels, source_val={"raw": source_val, "rendered": source_val + 0.25},
                     source_val_labels=source_val_labels, labels_per_class=3, source_per_class=10)
    return task, test


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(144, 10))


def image_transform(image: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(image)


def test_every_arm_runs_chooses_on_validation_and_never_reads_the_test_split():
    task, test = toy_task(poison_test=True)
    arms = digit_arms(task, tiny_model, image_transform, cs=[0.01, 1.0], batch_size=10, lr=1e-2,
                      device=torch.device("cpu"))
    assert list(arms) == list(SETUPS)
    result = compare(arms, seeds=[0, 1], budget=Budget(steps=12), score_test=lambda outcome: 0.5, progress=False)
    table = result.table
    assert set(table["arm"]) == set(SETUPS) and table["val"].between(0, 1).all()
    probes = table[table["arm"] != "fine-tuning"]
    assert all(choice["C"] in (0.01, 1.0) for choice in probes["choice"])
    tuned = table[table["arm"] == "fine-tuning"]
    assert (tuned["steps"] == 12).all() and all(1 <= choice["epoch"] <= 4 for choice in tuned["choice"])


def test_the_predictor_scores_the_indices_it_is_given_and_draws_follow_the_seed():
    task, test = toy_task()
    arm = digit_arms(task, tiny_model, image_transform, cs=[0.1], batch_size=10, lr=1e-2,
                     device=torch.device("cpu"))["feature extraction"]
    result = compare({"feature extraction": arm}, seeds=[0, 1], budget=Budget(steps=1),
                     score_test=lambda outcome: outcome.predictor(test), progress=False)
    assert result.table["test"].between(0.5, 1.0).all()  # well separated clusters: far above chance (0.1)
    assert np.array_equal(task.labelled(0), task.labelled(0)) and not np.array_equal(task.labelled(0), task.labelled(1))
    assert np.bincount(task.labels[task.labelled(0)], minlength=10).tolist() == [3] * 10
    assert set(task.labelled(0)) <= set(task.pool)


def test_a_step_budget_smaller_than_one_epoch_is_refused():
    task, _ = toy_task()
    arm = digit_arms(task, tiny_model, image_transform, cs=[0.1], batch_size=10, lr=1e-2,
                     device=torch.device("cpu"))["fine-tuning"]
    with pytest.raises(ValueError, match="one epoch is 3 steps"):
        compare({"fine-tuning": arm}, seeds=[0], budget=Budget(steps=2), score_test=lambda outcome: 0.0,
                progress=False)
