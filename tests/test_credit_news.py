"""Tests of the financial-news part of tlutils.course.credit on tiny synthetic articles (no data files needed)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from tlutils.course import credit as cr

WORDS = {1: "shares profit bank market economy", 0: "film match election phone album"}


def _news(n=400, seed=0):
    rng = np.random.default_rng(seed)
    positive = (rng.random(n) < 0.25).astype(np.int64)
    texts = [f"article {i} " + " ".join(rng.choice(WORDS[int(p)].split(), 6)) + " "
             + " ".join(rng.choice((WORDS[0] + " " + WORDS[1]).split(), 6)) for i, p in enumerate(positive)]
    embeddings = rng.normal(size=(n, 8)) + positive[:, None] * np.array([2.0] + [0.0] * 7)
    return texts, embeddings, positive


def test_business_labels_and_duplicates():
    names = ["business", "entertainment", "politics", "sport", "tech"]
    np.testing.assert_array_equal(cr.business_labels([0, 3, 0, 4], names), [1, 0, 1, 0])
    np.testing.assert_array_equal(cr.duplicate_texts(["a", "b", " a\n", "b", "c"]), [2, 3])
    assert cr.duplicate_texts(["x", "y"]).size == 0
    with pytest.raises(ValueError, match="not among the class names"):
        cr.business_labels([0, 1], ["sport", "tech"])
    with pytest.raises(ValueError, match="class indices"):
        cr.business_labels([0, 7], names)


def test_precision_at_recall():
    scores, positive = np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])
    assert cr.precision_at_recall(scores, positive, 0.5) == 1.0  # the top article alone catches half
    assert cr.precision_at_recall(scores, positive, 1.0) == pytest.approx(2 / 3)
    assert cr.precision_at_recall(-scores, positive, 1.0) == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="recall"):
        cr.precision_at_recall(scores, positive, 0)
    with pytest.raises(ValueError, match="one length"):
        cr.precision_at_recall(scores, positive[:3])


def test_news_splits_are_disjoint_stratified_and_nested():
    _, _, positive = _news()
    small, large = cr.news_splits(positive, 3, 30, 50, 150), cr.news_splits(positive, 3, 120, 50, 150)
    assert len(set(small["train"]) | set(small["val"]) | set(small["test"])) == 30 + 50 + 150
    np.testing.assert_array_equal(small["test"], large["test"])
    np.testing.assert_array_equal(small["train"], large["train"][:30])  # nested label budgets
    assert abs(positive[small["train"]].mean() - positive.mean()) < 0.1
    with pytest.raises(ValueError, match="pool"):
        cr.news_splits(positive, 0, 300, 50, 150)


def test_news_comparison_runs_end_to_end_and_is_repeatable():
    texts, embeddings, positive = _news()
    run = lambda: cr.run_news_comparison(texts, embeddings, positive, seeds=[0, 1], n_labelled=40, n_val=50,  # noqa: E731
                                         n_test=150, cs=(0.1, 1.0), progress=False)
    result = run()
    assert set(result.auc.arms) == set(result.precision.arms) == set(cr.NEWS_ARMS)
    assert (result.auc.table["test"] > 0.7).all()  # both arms can see the signal
    assert result.precision.table["test"].between(0, 1).all()
    assert (result.auc.table["steps"] == 2).all()  # one fit per C, the same for both arms
    np.testing.assert_array_equal(result.auc.table["test"], run().auc.table["test"])
    fig = cr.plot_news_budgets({40: result}, title="t")
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="one text"):
        cr.news_arms(texts[:10], embeddings, positive, 40)
