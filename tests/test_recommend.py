"""Unit tests of tlutils.course.recommend on tiny synthetic data (no assets, no encoder)."""

import numpy as np
import pandas as pd
import pytest

from tlutils.core.compare import Budget, compare
from tlutils.course.recommend import (
    ColdStartExperiment,
    cold_start_split,
    content_to_factors,
    fit_mf,
    interaction_matrix,
    item_texts,
    metadata_features,
    recall_at_k,
)


def _toy(n_users=40, n_items=60, seed=0):
    """Two user tastes, two item kinds; the content feature says the kind."""
    rng = np.random.default_rng(seed)
    kind = np.arange(n_items) % 2
    taste = np.arange(n_users) % 2
    matrix = ((taste[:, None] == kind[None, :]) & (rng.random((n_users, n_items)) < 0.6)).astype(np.float32)
    content = np.stack([kind, 1 - kind], axis=1).astype(float) + rng.normal(0, 0.05, (n_items, 2))
    return matrix, content


def test_interaction_matrix_and_bad_ids():
    ratings = pd.DataFrame({"user": [1, 2, 2], "item": [1, 1, 3]})
    matrix = interaction_matrix(ratings, 2, 3)
    assert matrix.tolist() == [[1, 0, 0], [1, 0, 1]]
    with pytest.raises(ValueError, match="item ids"):
        interaction_matrix(pd.DataFrame({"user": [1], "item": [4]}), 2, 3)


def test_cold_start_split_holds_out_whole_items():
    matrix, _ = _toy()
    split = cold_start_split(matrix, seed=1, cold_fraction=0.2, min_ratings=1)
    cold = np.concatenate([split.val_items, split.test_items])
    assert len(set(cold) & set(split.warm_items)) == 0 and len(set(split.val_items) & set(split.test_items)) == 0
    assert split.train.shape == (40, len(split.warm_items)) and split.test.shape == (40, len(split.test_items))
    assert not np.array_equal(split.val_items, cold_start_split(matrix, seed=2, min_ratings=1).val_items)
    with pytest.raises(ValueError, match="cold_fraction"):
        cold_start_split(matrix, seed=0, cold_fraction=0.6)
    with pytest.raises(ValueError, match="too few"):
        cold_start_split(matrix, seed=0, min_ratings=10_000)


def test_fit_mf_reconstructs_and_rejects_bad_settings():
    matrix, _ = _toy()
    users, items = fit_mf(matrix, factors=4, reg=0.1, sweeps=5)
    assert np.mean((users @ items.T - matrix) ** 2) < np.mean((matrix - matrix.mean()) ** 2)
    with pytest.raises(ValueError, match="factors"):
        fit_mf(matrix, factors=0, reg=1.0)


def test_recall_at_k_perfect_random_and_errors():
    truth = np.eye(4)
    assert recall_at_k(truth * 5, truth, k=1) == 1.0
    assert recall_at_k(-truth, truth, k=3) == 0.0
    with pytest.raises(ValueError, match="must match"):
        recall_at_k(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="no user"):
        recall_at_k(np.zeros((2, 2)), np.zeros((2, 2)))


def test_content_map_predicts_cold_factors():
    matrix, content = _toy()
    warm = np.arange(40)
    _, items = fit_mf(matrix[:, warm], factors=2, reg=0.1)
    predicted = content_to_factors(content, warm, items, alpha=1.0)
    assert predicted.shape == (60, 2)
    with pytest.raises(ValueError, match="alpha"):
        content_to_factors(content, warm, items, alpha=0.0)
    with pytest.raises(ValueError, match="warm items"):
        content_to_factors(content, warm[:5], items, alpha=1.0)


def test_metadata_and_texts_handle_missing_years():
    items = pd.DataFrame({"title": ["A", "B"], "year": pd.array([1995, None], dtype="Int64"),
                          "genres": [("Comedy",), ()]})
    features = metadata_features(items)
    assert features.shape == (2, 28) and features[1, -1] == 1.0 and features[0, -2] == 1.0
    assert item_texts(items) == ["A (1995). Genres: Comedy.", "B. Genres: unknown."]


def test_experiment_arms_run_under_the_protocol():
    matrix, content = _toy()
    metadata = np.concatenate([content, np.zeros((60, 17))], axis=1)  # 19 "genre" columns
    experiment = ColdStartExperiment(matrix, metadata, content, factors=(2,), regs=(1.0,), alphas=(1.0,),
                                     weights=(0.5,), sweeps=2, k=5)
    experiment._splits = {s: cold_start_split(matrix, s, 0.2, min_ratings=1) for s in (0, 1)}
    result = compare(experiment.arms(), seeds=[0, 1], budget=experiment.budget(), score_test=experiment.score_test,
                     progress=False)
    summary = result.summary()
    assert summary.loc["MF + MiniLM text", "test_mean"] > summary.loc["genre popularity", "test_mean"]
    assert isinstance(experiment.budget(), Budget) and experiment.budget().steps == 2
    with pytest.raises(ValueError, match="metadata rows"):
        ColdStartExperiment(matrix, metadata[:5], content)


def test_plot_returns_a_figure():
    summary = pd.DataFrame({"test_mean": [0.2, 0.4], "test_se": [0.01, 0.02]}, index=["a", "b"])
    from tlutils.course.recommend import plot_cold_and_warm

    fig = plot_cold_and_warm(summary, [0.45, 0.5, 0.47], [0.5, 0.55, 0.52])
    assert len(fig.axes) == 1
