"""Tests of tlutils.course.credit on tiny synthetic loan books (no data files needed)."""

import numpy as np
import pandas as pd
import pytest

from tlutils.core.compare import Budget
from tlutils.course import credit as cr


def _german(n=200, seed=0):
    rng = np.random.default_rng(seed)
    bad = rng.random(n) < 0.3
    return pd.DataFrame({
        "credit_amount": rng.integers(250, 10_000, n) * np.where(bad, 2, 1),
        "duration_in_month": rng.integers(6, 48, n),
        "present_employment_since": rng.choice(list(cr.EMPLOYMENT_YEARS), n),
        "housing": rng.choice(list(cr.GERMAN_HOME), n),
        "job": rng.choice(list(cr.GERMAN_JOB), n),
        "purpose": rng.choice(["car (new)", "education"], n),
        "personal_status_and_sex": rng.choice(["male : single", "female : divorced/separated/married"], n),
        "age_in_years": rng.integers(19, 70, n),
        "foreign_worker": rng.choice(["yes", "no"], n),
        "creditability": np.where(bad, "bad", "good"),
    })


def _source(n=300, seed=1):
    rng = np.random.default_rng(seed)
    bad = rng.random(n) < 0.3
    return pd.DataFrame({
        "Status": pd.Categorical(np.where(bad, "bad", "good")),
        "Amount": rng.integers(100, 5000, n) * np.where(bad, 2, 1), "Time": rng.integers(6, 60, n),
        "Seniority": rng.integers(0, 30, n), "Age": rng.integers(18, 70, n),
        "Home": pd.Categorical(rng.choice(["owner", "rent", "parents", "priv", None], n)),
        "Job": pd.Categorical(rng.choice(["fixed", "freelance", "partime", "others"], n)),
    })


def test_shared_features_have_the_same_columns_in_both_books():
    german, source = cr.shared_features_german(_german()), cr.shared_features_source(_source())
    assert list(german.columns) == list(source.columns) == list(cr.SHARED_COLUMNS)
    assert german.notna().all().all() and source.notna().all().all()
    assert len(cr.feature_mapping()) + 1 == len(cr.feature_mapping(use_age=True))
    assert "age_years" in cr.shared_features_german(_german(), use_age=True)


def test_all_features_leave_out_protected_attributes_and_target():
    columns = cr.german_all_features(_german()).columns
    assert not any(name.startswith(cr.PROTECTED_COLUMNS + (cr.TARGET_GERMAN,)) for name in columns)
    assert any(name.startswith("purpose_") for name in columns)


def test_metrics():
    risk, bad = np.array([0.1, 0.9, 0.2, 0.8]), np.array([0, 1, 0, 1])
    assert cr.roc_auc(risk, bad) == 1.0
    assert cr.bad_rate_at_approval(risk, bad, 0.5) == 0.0
    assert cr.bad_rate_at_approval(risk, bad, 1.0) == 0.5
    paradox = cr.accuracy_paradox(np.full(4, -1.0), bad)
    assert paradox["model_accuracy"] == paradox["all_good_accuracy"] == 0.5 and paradox["model_bad_recall"] == 0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="approval_rate"):
        cr.bad_rate_at_approval(np.zeros(3), np.zeros(3), 0)
    with pytest.raises(ValueError, match="one length"):
        cr.bad_rate_at_approval(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="both good and bad"):
        cr.roc_auc(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="'good' or 'bad'"):
        cr.bad_labels(pd.Series(["good", "maybe"]))
    with pytest.raises(ValueError, match="lacks the columns"):
        cr.shared_features_german(pd.DataFrame({"credit_amount": [1]}))
    with pytest.raises(TypeError, match="DataFrame"):
        cr.shared_features_source([1, 2])
    wrong = _german().assign(housing="castle")
    with pytest.raises(ValueError, match="unknown codes"):
        cr.shared_features_german(wrong)
    with pytest.raises(ValueError, match="exceeds the pool"):
        cr.CreditTask(_german(), _source(), seed=0, n_labelled=60, n_pool=50, n_val=20)
    with pytest.raises(ValueError, match="test split"):
        cr.CreditTask(_german(), _source(), seed=0, n_labelled=50, n_pool=150, n_val=20)
    with pytest.raises(TypeError, match="CreditTask"):
        cr.credit_arms("task", "source")
    with pytest.raises(ValueError, match="steps budget"):
        cr.run_credit_comparison(_german(), _source(), seeds=[0], n_labelled=40, budget=Budget(seconds=1.0))


def test_splits_are_disjoint_stratified_and_nested():
    small = cr.CreditTask(_german(), _source(), seed=3, n_labelled=20, n_pool=80, n_val=40)
    large = cr.CreditTask(_german(), _source(), seed=3, n_labelled=60, n_pool=80, n_val=40)
    assert len(small["y_train"]) == 20 and len(small["y_val"]) == 40 and len(small["y_test"]) == 80
    np.testing.assert_array_equal(small["wide_train"], large["wide_train"][:20])  # nested labelled sets
    assert 0.15 < small["y_val"].mean() < 0.45


def test_pretraining_learns_and_comparison_runs_end_to_end():
    german, source = _german(), _source()
    task = cr.CreditTask(german, source, seed=0, n_labelled=40, n_pool=80, n_val=40)
    pretrained = cr.pretrain_source(task, steps=60)
    assert pretrained.source_val_auc > 0.6 and pretrained.steps <= 60
    sources = {0: pretrained, 1: cr.pretrain_source(task, steps=20)}  # given, so no full-length pre-training runs
    result = cr.run_credit_comparison(german, source, seeds=[0, 1], n_labelled=40, n_pool=80, n_val=40,
                                      budget=Budget(steps=20), lrs=(3e-3,), sources=sources, progress=False)
    assert set(result.auc.arms) == set(result.bad_rate.arms) and len(result.auc.arms) == 6
    assert (result.auc.table["steps"] <= 20).all()
    assert result.bad_rate.table["test"].between(0, 1).all()
    assert set(cr.curve_table({40: result})["arm"]) == set(result.auc.arms)
    fig = cr.plot_learning_curves({40: result}, arms=["LR: German only"])
    assert len(fig.axes) == 1
