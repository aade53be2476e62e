"""The retail section of notebook 10: recommending new (cold-start) movies on MovieLens 100k.

Collaborative filtering (a dense least-squares matrix factorisation of the implicit
"user rated item" matrix, :func:`fit_mf`) only knows items that have ratings. A new item
gets a factor from its content through a ridge map learned on the warm items
(:func:`content_to_factors`): from genres and release decade (no transfer), from a
pre-trained sentence encoder's embedding of its title and genres (:func:`item_texts`), or
from a blend of both. :class:`ColdStartExperiment` builds the comparison arms; the seed
picks which items are held out as cold (validation and test) and the factorisation's start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tlutils.core.compare import Outcome, Trial

#: Decade bins of the release year used by the metadata features (plus one "unknown" column).
DECADES = (1920, 1930, 1940, 1950, 1960, 1970, 1980, 1990)


@dataclass(frozen=True)
class ColdStartSplit:
    """Users x items interaction matrices (1 = the user rated the item) for one seed.

    Attributes:
        train: ``users x len(warm_items)``: every rating of the warm items.
        warm_items: Row indices (into the item table) of the items with training ratings.
        val_items: Cold items whose ratings choose the hyper-parameters.
        test_items: Cold items scored once at the end.
        val: ``users x len(val_items)``: the held-out ratings of the validation items.
        test: ``users x len(test_items)``: the held-out ratings of the test items.
    """

    train: np.ndarray
    warm_items: np.ndarray
    val_items: np.ndarray
    test_items: np.ndarray
    val: np.ndarray
    test: np.ndarray


def interaction_matrix(ratings, n_users: int, n_items: int) -> np.ndarray:
    """The dense binary matrix of who rated what (users and items numbered from 1, as in MovieLens).

    Args:
        ratings: A frame with integer ``user`` and ``item`` columns.
        n_users: Number of users.
        n_items: Number of items.

    Returns:
        ``n_users x n_items`` float32 array of 0 and 1.

    Raises:
        ValueError: A user or item id lies outside ``1..n``.
    """
    users = ratings["user"].to_numpy() - 1
    items = ratings["item"].to_numpy() - 1
    if users.min(initial=0) < 0 or users.max(initial=0) >= n_users or items.min(initial=0) < 0 \
            or items.max(initial=0) >= n_items:
        raise ValueError(f"user ids must lie in 1..{n_users} and item ids in 1..{n_items}")
    matrix = np.zeros((n_users, n_items), dtype=np.float32)
    matrix[users, items] = 1.0
    return matrix


def cold_start_split(matrix: np.ndarray, seed: int, cold_fraction: float = 0.15,
                     min_ratings: int = 5) -> ColdStartSplit:
    """Hold out whole items: a random ``cold_fraction`` for validation and as many for test.

    Only items with at least ``min_ratings`` ratings can be drawn as cold (so each held-out item
    has users to find it); all their ratings leave the training matrix.

    Args:
        matrix: ``users x items`` binary interactions (:func:`interaction_matrix`).
        seed: Picks the cold items.
        cold_fraction: Share of the eligible items in each of the validation and test sets.
        min_ratings: Ratings an item needs to be eligible as cold.

    Returns:
        A :class:`ColdStartSplit`.

    Raises:
        ValueError: ``cold_fraction`` is not in (0, 0.5) or too few items are eligible.
    """
    if not 0 < cold_fraction < 0.5:
        raise ValueError(f"cold_fraction must lie in (0, 0.5), got {cold_fraction}")
    eligible = np.flatnonzero(matrix.sum(axis=0) >= min_ratings)
    n_cold = int(round(cold_fraction * len(eligible)))
    if n_cold < 2:
        raise ValueError(f"only {len(eligible)} items have >= {min_ratings} ratings; too few to hold out")
    drawn = np.random.default_rng(seed).permutation(eligible)
    val_items, test_items = np.sort(drawn[:n_cold]), np.sort(drawn[n_cold:2 * n_cold])
    warm_items = np.setdiff1d(np.arange(matrix.shape[1]), np.concatenate([val_items, test_items]))
    return ColdStartSplit(matrix[:, warm_items], warm_items, val_items, test_items,
                          matrix[:, val_items], matrix[:, test_items])


def fit_mf(matrix: np.ndarray, factors: int, reg: float, sweeps: int = 8,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Matrix factorisation ``matrix ~ U V^T`` by alternating ridge least squares on every cell.

    Every unrated cell counts as a 0 with the same weight as a rating (the "PureSVD" view of
    implicit feedback), which makes each sweep two small closed-form solves.

    Args:
        matrix: ``users x items`` binary interactions.
        factors: Rank of the factorisation.
        reg: Ridge penalty on both factor matrices.
        sweeps: Alternating updates (each is one "step" of the budget).
        seed: Seeds the random start of ``V``.

    Returns:
        ``(U, V)``: ``users x factors`` and ``items x factors``.

    Raises:
        ValueError: ``factors`` < 1, ``reg`` < 0 or ``sweeps`` < 1.
    """
    if factors < 1 or reg < 0 or sweeps < 1:
        raise ValueError(f"need factors >= 1, reg >= 0 and sweeps >= 1; got {factors}, {reg}, {sweeps}")
    matrix = np.asarray(matrix, dtype=np.float64)
    items = np.random.default_rng(seed).normal(0.0, 0.1, (matrix.shape[1], factors))
    penalty = reg * np.eye(factors)
    for _ in range(sweeps):
        users = np.linalg.solve(items.T @ items + penalty, items.T @ matrix.T).T
        items = np.linalg.solve(users.T @ users + penalty, users.T @ matrix).T
    return users, items


def metadata_features(items) -> np.ndarray:
    """Genre one-hot (19 MovieLens genres) plus release-decade one-hot: the no-transfer content.

    Args:
        items: The item table of :func:`~tlutils.core.tables.load_movielens_100k`.

    Returns:
        ``items x (19 + len(DECADES) + 1)`` float32 array.
    """
    from tlutils.core.tables import MOVIELENS_GENRES

    genres = np.array([[genre in row for genre in MOVIELENS_GENRES] for row in items["genres"]], dtype=np.float32)
    decades = np.zeros((len(items), len(DECADES) + 1), dtype=np.float32)
    for row, year in enumerate(items["year"]):
        if _missing(year):
            decades[row, -1] = 1.0
        else:
            decades[row, max(0, np.searchsorted(DECADES, int(year), side="right") - 1)] = 1.0
    return np.concatenate([genres, decades], axis=1)


def _missing(year) -> bool:
    """Whether a year cell is empty (None, NaN or pandas' NA)."""
    import pandas as pd

    return bool(pd.isna(year))


def item_texts(items) -> list[str]:
    """One sentence per item for a text encoder: ``"Toy Story (1995). Genres: Animation, Children's, Comedy."``."""
    texts = []
    for title, year, genres in zip(items["title"], items["year"], items["genres"]):
        when = "" if _missing(year) else f" ({int(year)})"
        texts.append(f"{title}{when}. Genres: {', '.join(genres) or 'unknown'}.")
    return texts


def content_to_factors(features: np.ndarray, warm: np.ndarray, factors: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge map from item content to MF item factors, fitted on the warm items, applied to all.

    Features are standardised with the warm items' mean and spread (no cold item is seen).

    Args:
        features: ``items x d`` content features of every item.
        warm: Indices of the warm items (rows of ``factors`` follow this order).
        factors: ``len(warm) x k`` item factors of the warm items.
        alpha: Ridge penalty.

    Returns:
        ``items x k`` predicted factors for every item.

    Raises:
        ValueError: Shapes disagree or ``alpha`` <= 0.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if len(warm) != len(factors) or features.ndim != 2:
        raise ValueError(f"{len(warm)} warm items but {len(factors)} factor rows, features {features.shape}")
    mean, std = features[warm].mean(axis=0), features[warm].std(axis=0) + 1e-6
    x = (features - mean) / std
    x_warm = x[warm]
    weights = np.linalg.solve(x_warm.T @ x_warm + alpha * np.eye(x.shape[1]), x_warm.T @ factors)
    return x @ weights


def recall_at_k(scores: np.ndarray, truth: np.ndarray, k: int = 20, seed: int = 0) -> float:
    """Mean over users with at least one held-out item of ``hits in top k / min(k, held-out items)``.

    Ties are broken at random (seeded): ordering by item id would leak, since MovieLens numbers
    older, more popular films first.

    Args:
        scores: ``users x items`` scores (higher = recommend first).
        truth: ``users x items`` binary held-out interactions.
        k: Length of the recommendation list.
        seed: Seeds the tie-breaking.

    Returns:
        Recall@k in [0, 1].

    Raises:
        ValueError: Shapes differ, ``k`` < 1, or no user has a held-out item.
    """
    if scores.shape != truth.shape or k < 1:
        raise ValueError(f"scores {scores.shape} and truth {truth.shape} must match, and k >= 1 (got {k})")
    users = truth.sum(axis=1) > 0
    if not users.any():
        raise ValueError("no user has a held-out item: recall is undefined")
    jitter = np.random.default_rng(seed).random(scores.shape[1]) * 1e-9 * (np.abs(scores).max() + 1.0)
    top = np.argsort(-(scores[users] + jitter), axis=1)[:, :k]
    hits = np.take_along_axis(truth[users], top, axis=1).sum(axis=1)
    return float(np.mean(hits / np.minimum(k, truth[users].sum(axis=1))))


class ColdStartExperiment:
    """The arms of the cold-start comparison, sharing one split and MF grid per seed.

    Args:
        matrix: ``users x items`` binary interactions of the whole log.
        metadata: ``items x d`` genre/decade features (:func:`metadata_features`).
        text: ``items x e`` pre-trained text embeddings of :func:`item_texts`.
        factors: MF ranks to try on validation.
        regs: MF ridge penalties to try.
        alphas: Content-map ridge penalties to try.
        weights: Hybrid blend weights of the text map (0 = metadata only, 1 = text only).
        sweeps: Alternating sweeps per MF fit.
        k: Recall@k.

    Example:
        >>> experiment = ColdStartExperiment(matrix, metadata, text)
        >>> result = compare(experiment.arms(), seeds=[0, 1, 2], budget=experiment.budget(),
        ...                  score_test=experiment.score_test, metric="recall@20")
    """

    def __init__(self, matrix: np.ndarray, metadata: np.ndarray, text: np.ndarray,
                 factors: Sequence[int] = (16, 32, 64), regs: Sequence[float] = (10.0, 100.0),
                 alphas: Sequence[float] = (10.0, 100.0, 1000.0, 10000.0, 100000.0),
                 weights: Sequence[float] = (0.25, 0.5, 0.75),
                 sweeps: int = 8, k: int = 20):
        n_items = matrix.shape[1]
        if len(metadata) != n_items or len(text) != n_items:
            raise ValueError(f"{n_items} items in the matrix, {len(metadata)} metadata rows, {len(text)} text rows")
        if not (factors and regs and alphas and weights):
            raise ValueError("every hyper-parameter grid needs at least one value")
        self.matrix, self.metadata, self.text = matrix, np.asarray(metadata, float), np.asarray(text, float)
        self.factors, self.regs, self.alphas, self.weights = tuple(factors), tuple(regs), tuple(alphas), tuple(weights)
        self.sweeps, self.k = sweeps, k
        self._splits: dict[int, ColdStartSplit] = {}
        self._mf: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def budget(self):
        """The equal budget: every MF arm may fit the whole MF grid once."""
        from tlutils.core.compare import Budget

        return Budget(steps=len(self.factors) * len(self.regs) * self.sweeps)

    def split(self, seed: int) -> ColdStartSplit:
        """The seed's split (built once)."""
        if seed not in self._splits:
            self._splits[seed] = cold_start_split(self.matrix, seed)
        return self._splits[seed]

    def mf(self, seed: int, factors: int, reg: float) -> tuple[np.ndarray, np.ndarray]:
        """The seed's MF fit on the warm training matrix (fitted once, shared by the arms)."""
        key = (seed, factors, reg)
        if key not in self._mf:
            self._mf[key] = fit_mf(self.split(seed).train, factors, reg, self.sweeps, seed)
        return self._mf[key]

    def _predicted_factors(self, seed: int, factors: int, reg: float, alpha: float, weight: float) -> tuple:
        split = self.split(seed)
        users, items = self.mf(seed, factors, reg)
        warm = split.warm_items
        blend = 0.0
        if weight < 1:
            blend = blend + (1 - weight) * content_to_factors(self.metadata, warm, items, alpha)
        if weight > 0:
            blend = blend + weight * content_to_factors(self.text, warm, items, alpha)
        return users, blend

    def _score(self, predictor: dict, on: str) -> float:
        split = self.split(predictor["seed"])
        columns, truth = (split.val_items, split.val) if on == "val" else (split.test_items, split.test)
        scores = predictor["users"] @ predictor["items"][columns].T
        return recall_at_k(scores, truth, self.k, seed=predictor["seed"])

    def score_test(self, outcome: Outcome) -> float:
        """Recall@k of an arm's choice on the test cold items (called once by the protocol)."""
        return self._score(outcome.predictor, "test")

    def _content_arm(self, trial: Trial, weights: Sequence[float]) -> Outcome:
        best = None
        for factors in self.factors:
            for reg in self.regs:
                for alpha in self.alphas:
                    for weight in weights:
                        users, items = self._predicted_factors(trial.seed, factors, reg, alpha, weight)
                        predictor = {"seed": trial.seed, "users": users, "items": items}
                        val = self._score(predictor, "val")
                        if best is None or val > best[0]:
                            best = (val, predictor, {"factors": factors, "reg": reg, "alpha": alpha, "w_text": weight})
        steps = len(self.factors) * len(self.regs) * self.sweeps
        params = best[2]["factors"] * (self.matrix.shape[0] + len(self.split(trial.seed).warm_items))
        return Outcome(best[1], val=best[0], steps=steps, trainable_params=params, choice=best[2])

    def genre_popularity(self, trial: Trial) -> Outcome:
        """No personalisation, no transfer: a new item scores the mean training popularity of its genres."""
        split = self.split(trial.seed)
        genres = self.metadata[:, :19]
        counts = split.train.sum(axis=0)
        per_genre = genres[split.warm_items].T @ counts / np.maximum(genres[split.warm_items].sum(axis=0), 1)
        item_score = genres @ per_genre / np.maximum(genres.sum(axis=1), 1)
        predictor = {"seed": trial.seed, "users": np.ones((self.matrix.shape[0], 1)), "items": item_score[:, None]}
        return Outcome(predictor, val=self._score(predictor, "val"), steps=0, trainable_params=0)

    def arms(self) -> dict:
        """Name -> arm: genre popularity, MF + metadata map, MF + text map, MF + hybrid map."""
        return {"genre popularity": self.genre_popularity,
                "MF + genres/decade": lambda trial: self._content_arm(trial, (0.0,)),
                "MF + MiniLM text": lambda trial: self._content_arm(trial, (1.0,)),
                "MF + hybrid": lambda trial: self._content_arm(trial, self.weights)}

    def leaky_popularity(self, seed: int) -> tuple[float, float]:
        """The evaluation-leakage pitfall: popularity counted on the whole log, test ratings included.

        Returns:
            ``(leaky, honest_impossible)``: recall@k on the test cold items when each item is
            scored by its total number of ratings (which a new item cannot have yet), and the
            recall of a random ranking of the same items.
        """
        split = self.split(seed)
        counts = self.matrix[:, split.test_items].sum(axis=0)
        leaky = np.broadcast_to(counts, split.test.shape).astype(float)
        noise = np.random.default_rng(seed).random(split.test.shape)
        return recall_at_k(leaky, split.test, self.k, seed), recall_at_k(noise, split.test, self.k, seed)

    def warm_recall(self, seed: int, factors: int, reg: float, holdout: float = 0.1) -> float:
        """Recall@k of plain MF on warm items, ranked among as many candidates as the cold test has.

        A random ``holdout`` of the warm items' ratings is hidden from MF; each user then ranks a
        seeded random set of ``len(test_items)`` warm items (those they rated in training are put
        last, as a shop would not re-recommend them), so the number is on the same footing as the
        cold-item recall, whose candidates are the test cold items.
        """
        split = self.split(seed)
        train = split.train
        rng = np.random.default_rng(seed + 1000)
        rows, cols = np.nonzero(train)
        hidden = rng.random(len(rows)) < holdout
        fitted, truth = train.copy(), np.zeros_like(train)
        fitted[rows[hidden], cols[hidden]] = 0.0
        truth[rows[hidden], cols[hidden]] = 1.0
        users, items = self.mf_on(fitted, factors, reg, seed)
        candidates = np.sort(rng.choice(train.shape[1], size=len(split.test_items), replace=False))
        scores = users @ items[candidates].T - 1e6 * fitted[:, candidates]
        return recall_at_k(scores, truth[:, candidates], self.k, seed)

    def mf_on(self, matrix: np.ndarray, factors: int, reg: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """:func:`fit_mf` with this experiment's number of sweeps."""
        return fit_mf(matrix, factors, reg, self.sweeps, seed)


def plot_cold_and_warm(summary, warm: Sequence[float], leaky: Sequence[float], k: int = 20):
    """Bars of test recall@k on cold items per arm (mean +- SE), with warm-item MF and leaky popularity as lines.

    Args:
        summary: :meth:`~tlutils.core.compare.Comparison.summary` of the cold-start comparison.
        warm: Per-seed recall@k of plain MF on held-out ratings of warm items.
        leaky: Per-seed recall@k of popularity counted with the test ratings (the leak).
        k: The k of recall@k, for the label.

    Returns:
        The matplotlib figure (nothing is saved).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    ax.barh(list(summary.index), summary["test_mean"], xerr=summary["test_se"].fillna(0), capsize=4,
            color="tab:blue", alpha=0.8, label="new (cold) items, test")
    for values, colour, text in ((warm, "tab:green", "plain MF, warm items (same number of candidates)"),
                                 (leaky, "tab:red", "popularity counted WITH the test ratings (leak)")):
        mean, se = float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values)))
        ax.axvline(mean, color=colour, linestyle="--", label=f"{text}: {mean:.2f}")
        ax.axvspan(mean - se, mean + se, color=colour, alpha=0.15)
    ax.invert_yaxis()
    ax.set_xlabel(f"recall@{k}: mean ± SE over {len(warm)} seeds")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, ncol=1)
    ax.set_title("MovieLens 100k: recommending movies nobody has rated yet")
    fig.tight_layout()
    return fig
