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


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


#: Word lists of four Word Embedding Association Tests from Caliskan, Bryson and Narayanan (2017),
#: "Semantics derived automatically from language corpora contain human-like biases", Science 356(6334),
#: 183-186 (supplementary materials). Each test: targets X and Y, attributes A and B; a positive effect
#: size means X is closer to A (and Y to B) than the other way round. WEAT 1 is the "universally accepted"
#: control association (flowers are pleasant, insects unpleasant); 6-8 are the gender tests.
WEAT_TESTS: dict[str, dict[str, tuple[str, ...]]] = {
    "flowers/insects ~ pleasant/unpleasant (WEAT 1)": {
        "X": _words("aster clover hyacinth marigold poppy azalea crocus iris orchid rose bluebell daffodil lilac "
                    "pansy tulip buttercup daisy lily peony violet carnation gladiola magnolia petunia zinnia"),
        "Y": _words("ant caterpillar flea locust spider bedbug centipede fly maggot tarantula bee cockroach gnat "
                    "mosquito termite beetle cricket hornet moth wasp blackfly dragonfly horsefly roach weevil"),
        "A": _words("caress freedom health love peace cheer friend heaven loyal pleasure diamond gentle honest "
                    "lucky rainbow diploma gift honor miracle sunrise family happy laughter paradise vacation"),
        "B": _words("abuse crash filth murder sickness accident death grief poison stink assault disaster hatred "
                    "pollute tragedy divorce jail poverty ugly cancer kill rotten vomit agony prison"),
    },
    "male/female names ~ career/family (WEAT 6)": {
        "X": _words("John Paul Mike Kevin Steve Greg Jeff Bill"),
        "Y": _words("Amy Joan Lisa Sarah Diana Kate Ann Donna"),
        "A": _words("executive management professional corporation salary office business career"),
        "B": _words("home parents children family cousins marriage wedding relatives"),
    },
    "math/arts ~ male/female terms (WEAT 7)": {
        "X": _words("math algebra geometry calculus equations computation numbers addition"),
        "Y": _words("poetry art dance literature novel symphony drama sculpture"),
        "A": _words("male man boy brother he him his son"),
        "B": _words("female woman girl sister she her hers daughter"),
    },
    "science/arts ~ male/female terms (WEAT 8)": {
        "X": _words("science technology physics chemistry Einstein NASA experiment astronomy"),
        "Y": _words("poetry art Shakespeare dance literature novel symphony drama"),
        "A": _words("brother father uncle grandfather son he his him"),
        "B": _words("sister mother aunt grandmother daughter she hers her"),
    },
}


def weat_table(embed, tests: dict | None = None, permutations: int = 10_000, seed: int = 0) -> "pandas.DataFrame":
    """Run several WEATs with one embedding function.

    Args:
        embed: ``embed(list_of_words) -> N x d`` array (e.g. sentence embeddings of single words).
        tests: Name -> ``{"X", "Y", "A", "B"}`` word lists; default :data:`WEAT_TESTS`.
        permutations: Permutations per test for the p-value.
        seed: Seed of the permutations.

    Returns:
        A DataFrame indexed by test name: ``effect_size``, ``p_value``, ``words`` (targets + attributes).
    """
    import pandas as pd

    rows = {}
    for name, lists in (tests or WEAT_TESTS).items():
        x, y, a, b = (embed(list(lists[key])) for key in "XYAB")
        result = weat_test(x, y, a, b, permutations=permutations, seed=seed)
        rows[name] = {"effect_size": result["effect_size"], "p_value": result["p_value"],
                      "words": sum(len(lists[key]) for key in "XYAB")}
    return pd.DataFrame.from_dict(rows, orient="index")


def group_balanced_weights(groups) -> np.ndarray:
    """Per-example weights ``n / (k * n_g)``: every group gets the same total weight (mean weight 1).

    Use them as sampling probabilities (group-balanced sampling) or as loss weights (reweighting).
    """
    groups = np.asarray(groups)
    if len(groups) == 0:
        raise ValueError("need at least one example")
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return len(groups) / (len(names) * counts[inverse])


def worst_group_accuracy(predictions, labels, groups) -> float:
    """The lowest per-group accuracy (:func:`per_group_accuracy`): the number a fairness fix should raise."""
    return min(accuracy for accuracy, _ in per_group_accuracy(predictions, labels, groups).values())
