"""Notebook 11's helpers around the learning curves: the TF-IDF arm, pixels, verdicts, new-task costs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tlutils.core.compare import Budget, Trial
from tlutils.core.features import LinearProbe
from tlutils.course.scratch_vs_transfer import (
    TextPipelineClassifier,
    new_task_costs,
    pixels,
    tfidf_arm,
    tfidf_parameter_count,
)
from tlutils.topics.learning_curves import checkpoint_arm, run_learning_curve, subset_picker

WORDS = {0: ["dull", "boring", "awful", "tedious"], 1: ["great", "lovely", "superb", "moving"]}


def toy_texts(n_per_class: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Short 'reviews' whose class is given by which word list their words come from."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for label, words in WORDS.items():
        for _ in range(n_per_class):
            texts.append(" ".join(rng.choice(words, 3)) + " film")
            labels.append(label)
    return texts, np.array(labels)


def text_setup():
    pool, pool_y = toy_texts(10, 0)
    val, val_y = toy_texts(5, 1)
    test, test_y = toy_texts(5, 2)
    texts = pool + val + test
    ids = torch.arange(len(texts))
    pool_ids, val_ids, test_ids = ids[:20], ids[20:30], ids[30:]
    return texts, (pool_ids, pool_y), (val_ids, val_y), (test_ids, test_y)


def test_tfidf_arm_chooses_c_on_validation_and_scores_through_indices():
    texts, (pool_ids, pool_y), (val_ids, val_y), (test_ids, test_y) = text_setup()
    arm = tfidf_arm(texts, subset_picker(pool_ids, pool_y), val_ids, val_y, Cs=(0.01, 10.0))
    outcome = arm(Trial(seed=0, budget=Budget(steps=10)), 5)
    assert outcome.steps == 2 and outcome.choice["C"] in (0.01, 10.0)
    assert outcome.val == pytest.approx(outcome.predictor.curve["val"].max())
    assert list(outcome.predictor.curve["step"]) == [1, 2] and outcome.predictor.curve["seconds"].is_monotonic_increasing
    model = outcome.predictor.model
    assert isinstance(model, TextPipelineClassifier) and outcome.trainable_params == tfidf_parameter_count(model.pipeline)
    from tlutils.core.train import evaluate

    loader = DataLoader(TensorDataset(test_ids, torch.as_tensor(test_y)), batch_size=4)
    assert evaluate(model, loader, "cpu")["accuracy"] == 1.0  # the word lists do not overlap


def test_tfidf_and_probe_arms_share_a_learning_curve_and_new_task_costs():
    texts, (pool_ids, pool_y), (val_ids, val_y), (test_ids, test_y) = text_setup()
    # a stand-in "encoder": one-hot counts of the eight words (a frozen body's features)
    vocab = [w for words in WORDS.values() for w in words]
    vectors = torch.tensor([[t.split().count(w) for w in vocab] for t in texts], dtype=torch.float32)
    y = torch.as_tensor(np.concatenate([pool_y, val_y, test_y]))
    probe = checkpoint_arm(lambda: LinearProbe(vectors[:20].mean(0), vectors[:20].std(0), 2),
                           subset_picker(vectors[:20], pool_y), "features",
                           DataLoader(TensorDataset(vectors[20:30], y[20:30]), batch_size=8), lr=0.05, batch_size=8,
                           checkpoints=2, setup_seconds_per_example=0.5, device="cpu")
    arms = {"frozen + head": probe, "scratch": tfidf_arm(texts, subset_picker(pool_ids, pool_y), val_ids, val_y)}
    loaders = {"features": {"test": DataLoader(TensorDataset(vectors[30:], y[30:]), batch_size=8)},
               "text ids": {"test": DataLoader(TensorDataset(test_ids, torch.as_tensor(test_y)), batch_size=8)}}
    curve = run_learning_curve(arms, per_class=[4], seeds=[0, 1], steps=20, loaders=loaders, device="cpu", progress=False)
    costs = new_task_costs(curve, 4)
    assert list(costs.index) == ["frozen + head", "scratch"]
    assert costs.loc["frozen + head", "trainable_params"] == 8 * 2 + 2
    assert costs.loc["frozen + head", "kB"] == pytest.approx(4 * 18 / 1e3)
    assert costs.loc["frozen + head", "seconds"] >= 0.5 * 8  # the extraction of 8 training texts is counted
    assert costs.loc["scratch", "kB"] > 0 and (costs["test"] > 0.5).all()


def test_pixels_scales_and_resizes():
    images = np.full((3, 8, 8), 255, dtype=np.uint8)
    out = pixels(images, size=28)
    assert out.shape == (3, 1, 28, 28) and torch.allclose(out, torch.ones_like(out))
    assert pixels(np.zeros((2, 28, 28), dtype=np.uint8)).shape == (2, 1, 28, 28)


def test_mnist_framed_centres_the_digit_on_a_black_canvas():
    from tlutils.course.scratch_vs_transfer import mnist_framed

    out = mnist_framed(np.full((2, 8, 8), 200, dtype=np.uint8))
    assert out.shape == (2, 28, 28) and out.dtype == np.uint8
    assert (out[:, 4:24, 4:24] == 200).all() and out[:, :4].max() == 0 and out[:, 24:].max() == 0
