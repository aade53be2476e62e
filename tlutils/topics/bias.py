"""Measuring a bias a pre-trained model brings: WEAT association tests and per-group accuracy.

* :func:`weat_effect_size` and :func:`weat_test` compute the Word Embedding Association Test
  (Caliskan et al., 2017) on any embeddings, with an exact-seeded permutation p-value.
* :func:`per_group_accuracy` and :func:`group_gap` score a classifier per group (for example per speaker)
  and report the best-minus-worst gap with a bootstrap interval.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_matrix(name: str, vectors) -> np.ndarray:
    array = np.asarray(torch.as_tensor(vectors, dtype=torch.float64))
    if array.ndim != 2 or len(array) < 2:
        raise ValueError(f"{name} must be a 2-D array of at least two embeddings (rows), got shape {array.shape}")
    return array / np.linalg.norm(array, axis=1, keepdims=True).clip(min=1e-12)


def _association(words: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """s(w, A, B): mean cosine to A minus mean cosine to B, one value per row of ``words``."""
    return (words @ a.T).mean(axis=1) - (words @ b.T).mean(axis=1)


def weat_effect_size(x, y, a, b) -> float:
    """WEAT effect size d: how much more target set X associates with attribute A (vs B) than Y does.

    Args:
        x, y: target embeddings (e.g. career words, family words), one row per word.
        a, b: attribute embeddings (e.g. male names, female names).

    Returns:
        Cohen's-d-style effect size in [-2, 2]; 0 means no differential association.
    """
    x, y, a, b = (_as_matrix(n, v) for n, v in zip("XYAB", (x, y, a, b)))
    sx, sy = _association(x, a, b), _association(y, a, b)
    spread = np.concatenate([sx, sy]).std(ddof=1)
    return float((sx.mean() - sy.mean()) / max(spread, 1e-12))


def weat_test(x, y, a, b, permutations: int = 10_000, seed: int = 0) -> dict:
    """Effect size and one-sided permutation p-value (re-splitting X u Y at random).

    Returns:
        ``{"effect_size", "statistic", "p_value", "permutations"}``; the p-value counts the observed split.
    """
    x, y, a, b = (_as_matrix(n, v) for n, v in zip("XYAB", (x, y, a, b)))
    scores = _association(np.concatenate([x, y]), a, b)
    observed = scores[: len(x)].sum() - scores[len(x) :].sum()
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        order = rng.permutation(len(scores))
        hits += scores[order[: len(x)]].sum() - scores[order[len(x) :]].sum() >= observed - 1e-12
    return {
        "effect_size": weat_effect_size(x, y, a, b),
        "statistic": float(observed),
        "p_value": float((hits + 1) / (permutations + 1)),
        "permutations": permutations,
    }


def per_group_accuracy(predictions, labels, groups) -> dict:
    """Accuracy within each group, e.g. each speaker: ``{group: (accuracy, count)}``."""
    predictions, labels, groups = (np.asarray(v) for v in (predictions, labels, groups))
    if not len(predictions) == len(labels) == len(groups) or len(labels) == 0:
        raise ValueError(
            f"predictions, labels and groups must be non-empty and equally long, got "
            f"{len(predictions)}, {len(labels)} and {len(groups)}"
        )
    return {
        g.item() if hasattr(g, "item") else g: (
            float((predictions[groups == g] == labels[groups == g]).mean()),
            int((groups == g).sum()),
        )
        for g in np.unique(groups)
    }


def group_gap(predictions, labels, groups, resamples: int = 1000, seed: int = 0) -> dict:
    """Best-minus-worst group accuracy with a 95% bootstrap interval (resampling within each group).

    Returns:
        ``{"gap", "low", "high", "best", "worst"}``.
    """
    table = per_group_accuracy(predictions, labels, groups)
    correct = np.asarray(predictions) == np.asarray(labels)
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    members = [correct[groups == g] for g in table]
    gaps = [np.ptp([rng.choice(m, len(m)).mean() for m in members]) for _ in range(resamples)]
    best, worst = max(table, key=lambda g: table[g][0]), min(table, key=lambda g: table[g][0])
    return {
        "gap": table[best][0] - table[worst][0],
        "low": float(np.quantile(gaps, 0.025)),
        "high": float(np.quantile(gaps, 0.975)),
        "best": best,
        "worst": worst,
    }
