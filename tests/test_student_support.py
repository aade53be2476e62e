import numpy as np
import pandas as pd
import pytest

from tlutils.core.compare import Budget, compare
from tlutils.course import student_support as ss


def _star_like(seed=0, schools=14, pupils=60):
    """A STAR-shaped table of made-up pupils (the real one is tested in test_application_data)."""
    rng = np.random.default_rng(seed)
    n = schools * pupils
    math1 = rng.normal(530, 40, n)
    return pd.DataFrame({
        "read1": math1 + rng.normal(0, 30, n), "math1": math1,
        "lunch1": rng.choice(["free", "non-free"], n), "star1": rng.choice(["small", "regular", "regular+aide"], n),
        "schoolid1": np.repeat(np.arange(schools), pupils).astype(float),
        "math3": 0.8 * math1 + rng.normal(200, 25, n),
    })


def test_support_table_labels_the_bottom_quarter_and_refuses_bad_input():
    star = _star_like()
    star.loc[:4, "math1"] = np.nan                      # incomplete records are left out
    table = ss.support_table(star)
    assert len(table) == len(star) - 5 and list(table.columns) == [*ss.FEATURES, "school", "needs_support"]
    assert abs(table["needs_support"].mean() - 0.25) < 0.03
    with pytest.raises(ValueError, match="lacks the columns"):
        ss.support_table(star.drop(columns="math3"))
    with pytest.raises(ValueError, match="quantile"):
        ss.support_table(star, quantile=1.5)


def test_school_split_keeps_new_schools_apart_and_labels_both_outcomes():
    table = ss.support_table(_star_like())
    split = ss.school_split(table, seed=3, new_schools=4, labelled=6, val=5)
    y = table["needs_support"].to_numpy()
    new_rows = np.concatenate([np.concatenate([split.labelled[s], split.val[s], split.test[s]])
                               for s in split.labelled])
    assert len(np.unique(new_rows)) == len(new_rows) and not set(new_rows) & set(split.source)
    assert len(new_rows) + len(split.source) == len(table)
    assert all(len(set(y[rows])) == 2 and len(rows) == 6 for rows in split.labelled.values())
    again = ss.school_split(table, seed=3, new_schools=4, labelled=6, val=5)
    assert all((again.test[s] == split.test[s]).all() for s in split.test)      # seeded
    with pytest.raises(ValueError, match="schools have"):
        ss.school_split(table, seed=0, new_schools=40)
    with pytest.raises(ValueError, match="min_pupils"):
        ss.school_split(table, seed=0, labelled=30, val=30)


def test_l2sp_logistic_stays_at_the_source_under_a_strong_pull_and_fits_the_data_without_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x @ np.array([2.0, -1.0, 0.0]) + rng.normal(0, 1.5, 200) > 0).astype(int)
    source = np.array([0.0, 0.0, 3.0])
    w_pulled, _ = ss.l2sp_logistic(x, y, source, 0.0, lam=1e4)
    assert np.allclose(w_pulled, source, atol=1e-2)
    w_free, _ = ss.l2sp_logistic(x, y, source, 0.0, lam=0.0)
    assert w_free[0] > 0.5 and w_free[1] < -0.2 and abs(w_free[2]) < 1.0   # the data's weights, not the source's
    with pytest.raises(ValueError, match="lam"):
        ss.l2sp_logistic(x, y, source, 0.0, lam=-1)


def test_support_arms_run_through_the_protocol_and_choose_on_validation():
    table = ss.support_table(_star_like())
    arms = ss.support_arms(table, new_schools=4, labelled=8, val=8)
    result = compare(arms, seeds=[0, 1], budget=Budget(steps=3),
                     score_test=lambda outcome: outcome.predictor.score(table, "test"), progress=False)
    assert list(result.arms) == list(ss.ARMS)
    assert result.table["test"].between(0, 1).all() and result.table["val"].between(0, 1).all()
    assert {tuple(c) for c in result.table["choice"]} <= {("C",), ("lam",)}
    # math1 predicts math3 in every school here, so a model of the other schools ranks pupils well
    assert result.table.query("arm == 'other schools, as is'")["test"].min() > 0.7


def test_mean_school_auc_skips_schools_with_one_outcome():
    risk = {"a": np.array([0.1, 0.9]), "b": np.array([0.3, 0.4])}
    labels = {"a": np.array([0, 1]), "b": np.array([1, 1])}
    assert ss.mean_school_auc(risk, labels) == 1.0
    with pytest.raises(ValueError, match="both outcomes"):
        ss.mean_school_auc({"b": risk["b"]}, {"b": labels["b"]})
