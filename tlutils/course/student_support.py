"""Education (notebook 10): flag the pupils who will need support in grade-3 maths, at a school with few records.

The data are Tennessee's STAR class-size experiment (AER's ``STAR``, 11,598 pupils): real grade-1 records
(reading and maths scores, free lunch, class type) and the grade-3 maths score of the same pupils. Gender and
ethnicity are in the table but deliberately not features: a support flag should not rest on them.
"Needs support" is a grade-3 maths score in the bottom quarter of all pupils with one.

Transfer here is across **schools**: a model fitted on the pupils of other schools is the pre-trained model,
and a new school has only a handful of its own pupils with known outcomes. Three arms, scored by the mean
per-school ROC-AUC on the new schools' other pupils:

- ``own pupils only``: a logistic regression per new school on its own labelled pupils;
- ``other schools, as is``: one logistic regression on every other school's pupils, applied unchanged;
- ``other schools + own pupils (L2-SP)``: per new school, the other schools' weights fine-tuned on its own
  pupils with a penalty ``lam * ||w - w_source||^2`` pulling them back (notebook 03's L2-SP for a linear model).

Every choice (``C``, ``lam``) is made on the new schools' validation pupils.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from tlutils.core.compare import Outcome, Trial

FEATURES = ("read1", "math1", "free_lunch", "small_class")
ARMS = ("own pupils only", "other schools, as is", "other schools + own pupils (L2-SP)")
MIN_OF_EACH = 5   # pupils of each outcome a new school needs (its own model needs both among its labelled pupils)
_NEEDED = ("read1", "math1", "lunch1", "star1", "schoolid1", "math3")


def support_table(star: pd.DataFrame, quantile: float = 0.25) -> pd.DataFrame:
    """One row per pupil with complete grade-1 records and a grade-3 maths score.

    Args:
        star: AER's ``STAR`` table (:func:`tlutils.core.tables.load_star`).
        quantile: A grade-3 maths score at or below this quantile of all pupils' scores counts as "needs support".

    Returns:
        Columns :data:`FEATURES`, ``school`` (the grade-1 school id) and ``needs_support`` (0/1).

    Raises:
        ValueError: A needed column is missing, or ``quantile`` is not in (0, 1).
    """
    missing = [c for c in _NEEDED if c not in star.columns]
    if missing:
        raise ValueError(f"the STAR table lacks the columns {missing}; load it with tlutils.core.tables.load_star()")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be between 0 and 1, got {quantile}")
    threshold = star["math3"].quantile(quantile)
    rows = star.dropna(subset=list(_NEEDED))
    return pd.DataFrame({
        "read1": rows["read1"].astype(float), "math1": rows["math1"].astype(float),
        "free_lunch": (rows["lunch1"] == "free").astype(float), "small_class": (rows["star1"] == "small").astype(float),
        "school": rows["schoolid1"].astype(int).astype(str),
        "needs_support": (rows["math3"] <= threshold).astype(int),
    }).reset_index(drop=True)


@dataclass
class SchoolSplit:
    """One seed's row indices: the other schools, and per new school its labelled, validation and test pupils."""

    source: np.ndarray
    labelled: dict
    val: dict
    test: dict


def school_split(table: pd.DataFrame, seed: int, new_schools: int = 10, labelled: int = 15, val: int = 10,
                 min_pupils: int = 50) -> SchoolSplit:
    """Draw ``new_schools`` schools (each with ``min_pupils`` pupils or more, and ``MIN_OF_EACH`` of each outcome).

    Each new school gets ``labelled`` pupils with known outcomes (at least one of each class), ``val``
    validation pupils and the rest as test pupils; every other school's pupils form the source.

    Raises:
        ValueError: Fewer than ``new_schools`` schools are large enough, or the sizes leave no test pupils.
    """
    if labelled < 2 or val < 2 or min_pupils <= labelled + val:
        raise ValueError(f"need labelled >= 2, val >= 2 and min_pupils > labelled + val; "
                         f"got {labelled}, {val}, {min_pupils}")
    counts = table.groupby("school")["needs_support"].agg(["size", "sum"])
    both = (counts["sum"] >= MIN_OF_EACH) & (counts["size"] - counts["sum"] >= MIN_OF_EACH)
    large = sorted(counts.index[(counts["size"] >= min_pupils) & both])
    if len(large) < new_schools:
        raise ValueError(f"only {len(large)} schools have {min_pupils} or more pupils with at least {MIN_OF_EACH} of "
                         "each outcome; ask for fewer new_schools or a smaller min_pupils")
    rng = np.random.default_rng(seed)
    chosen = [str(s) for s in rng.choice(large, size=new_schools, replace=False)]
    split = SchoolSplit(np.flatnonzero(~table["school"].isin(chosen).to_numpy()), {}, {}, {})
    y = table["needs_support"].to_numpy()
    for school in chosen:
        rows = rng.permutation(np.flatnonzero((table["school"] == school).to_numpy()))
        # the labelled pupils must hold both outcomes, or no model of the school alone can be fitted
        first = [rows[np.flatnonzero(y[rows] == c)[0]] for c in (0, 1) if (y[rows] == c).any()]
        rest = [r for r in rows if r not in first]
        take = np.array(first + rest[: labelled - len(first)])
        rest = np.array(rest[labelled - len(first):])
        split.labelled[school], split.val[school], split.test[school] = take, rest[:val], rest[val:]
    return split


def _standardiser(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 0, std, 1.0)
    return lambda z: (z - mean) / std


def _logistic(x: np.ndarray, y: np.ndarray, C: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=1000, random_state=seed).fit(x, y)


def l2sp_logistic(x: np.ndarray, y: np.ndarray, w_source: np.ndarray, b_source: float,
                  lam: float) -> tuple[np.ndarray, float]:
    """Logistic regression fine-tuned from source weights: mean log-loss + ``lam * ||w - w_source||^2``.

    The intercept is free (a school's base rate differs); ``lam`` -> infinity keeps the source weights.

    Returns:
        ``(weights, intercept)``.
    """
    from scipy.optimize import minimize

    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    y = np.asarray(y, dtype=float)

    def loss(params):
        w, b = params[:-1], params[-1]
        z = x @ w + b
        value = np.mean(np.logaddexp(0, z) - y * z) + lam * np.sum((w - w_source) ** 2)
        p = 1 / (1 + np.exp(-z))
        grad_w = x.T @ (p - y) / len(y) + 2 * lam * (w - w_source)
        return value, np.append(grad_w, np.mean(p - y))

    result = minimize(loss, np.append(w_source, b_source), jac=True, method="L-BFGS-B")
    return result.x[:-1], float(result.x[-1])


def mean_school_auc(risk: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> float:
    """Mean ROC-AUC over the schools whose pupils hold both outcomes."""
    from sklearn.metrics import roc_auc_score

    scores = [roc_auc_score(labels[s], risk[s]) for s in risk if len(np.unique(labels[s])) == 2]
    if not scores:
        raise ValueError("no school has pupils of both outcomes to score")
    return float(np.mean(scores))


@dataclass
class SchoolRisk:
    """A fitted arm: ``risk(school, x)`` for every new school, and the seed's split (the protocol scores its test)."""

    risk: Callable[[str, np.ndarray], np.ndarray]
    split: SchoolSplit

    def score(self, table: pd.DataFrame, part: str = "test") -> float:
        """Mean per-school ROC-AUC on the new schools' ``part`` pupils (``"val"`` or ``"test"``)."""
        x, y = table[list(FEATURES)].to_numpy(), table["needs_support"].to_numpy()
        rows = getattr(self.split, part)
        return mean_school_auc({s: self.risk(s, x[r]) for s, r in rows.items()}, {s: y[r] for s, r in rows.items()})


def support_arms(table: pd.DataFrame, *, new_schools: int = 10, labelled: int = 15, val: int = 10,
                 Cs: Sequence[float] = (0.1, 1.0, 10.0),
                 lams: Sequence[float] = (0.1, 1.0, 10.0)) -> dict[str, Callable[[Trial], Outcome]]:
    """The three arms of the module docstring for :func:`~tlutils.core.compare.compare`.

    Each seed draws its own new schools and pupils (:func:`school_split`); each arm tries three settings
    (one "step" per fit setting) and keeps the one with the best mean validation AUC. The source model
    under the L2-SP arm is fitted with ``C = 1`` (thousands of pupils: the penalty barely matters).
    """
    x, y = table[list(FEATURES)].to_numpy(), table["needs_support"].to_numpy()

    def pick(trial: Trial, options, make, name: str) -> Outcome:
        split = school_split(table, trial.seed, new_schools, labelled, val)
        best = None
        for option in options:
            fitted = SchoolRisk(make(split, option, trial.seed), split)
            score = fitted.score(table, "val")
            if best is None or score > best.val:
                best = Outcome(fitted, val=score, steps=len(options), trainable_params=len(FEATURES) + 1,
                               choice={name: option})
        return best

    def own(split, C, seed):
        models = {}
        for school, rows in split.labelled.items():
            scale = _standardiser(x[rows])
            models[school] = (scale, _logistic(scale(x[rows]), y[rows], C, seed))
        return lambda school, z: models[school][1].decision_function(models[school][0](z))

    def source_model(split, C, seed):
        scale = _standardiser(x[split.source])
        return scale, _logistic(scale(x[split.source]), y[split.source], C, seed)

    def as_is(split, C, seed):
        scale, model = source_model(split, C, seed)
        return lambda school, z: model.decision_function(scale(z))

    def l2sp(split, lam, seed):
        scale, model = source_model(split, 1.0, seed)
        tuned = {school: l2sp_logistic(scale(x[rows]), y[rows], model.coef_[0], float(model.intercept_[0]), lam)
                 for school, rows in split.labelled.items()}
        return lambda school, z: scale(z) @ tuned[school][0] + tuned[school][1]

    return {ARMS[0]: lambda trial: pick(trial, Cs, own, "C"),
            ARMS[1]: lambda trial: pick(trial, Cs, as_is, "C"),
            ARMS[2]: lambda trial: pick(trial, lams, l2sp, "lam")}
