import numpy as np
import pytest
import torch

from tlutils.topics.bias import group_gap, per_group_accuracy, weat_effect_size, weat_test


def _sets(shift: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    a_dir, b_dir = np.eye(16)[0], np.eye(16)[1]
    a = a_dir + 0.1 * rng.normal(size=(8, 16))
    b = b_dir + 0.1 * rng.normal(size=(8, 16))
    x = rng.normal(size=(8, 16)) + shift * a_dir
    y = rng.normal(size=(8, 16)) + shift * b_dir
    return x, y, a, b


def test_weat_detects_a_planted_association_and_its_reverse():
    x, y, a, b = _sets(shift=3.0)
    result = weat_test(x, y, a, b, permutations=2000)
    assert result["effect_size"] > 1.5 and result["p_value"] < 0.01
    assert weat_effect_size(y, x, a, b) == pytest.approx(-result["effect_size"])


def test_weat_without_association_is_not_significant():
    x, _, a, b = _sets(shift=3.0)
    result = weat_test(x, x.copy(), a, b, permutations=2000)  # identical target sets: no differential association
    assert result["effect_size"] == pytest.approx(0.0, abs=1e-9) and result["p_value"] > 0.4
    assert weat_test(x, a, a, b, permutations=200, seed=1) == weat_test(x, a, a, b, permutations=200, seed=1)


def test_weat_rejects_bad_shapes():
    with pytest.raises(ValueError, match="X must be a 2-D array"):
        weat_effect_size(np.ones(4), np.ones((2, 4)), np.ones((2, 4)), np.ones((2, 4)))


def test_per_group_accuracy_and_gap():
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    predictions = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    groups = np.array(["a", "a", "a", "a", "b", "b", "b", "b"])
    table = per_group_accuracy(predictions, labels, groups)
    assert table == {"a": (1.0, 4), "b": (0.5, 4)}
    gap = group_gap(predictions, labels, groups, resamples=300)
    assert gap["gap"] == pytest.approx(0.5) and gap["best"] == "a" and gap["worst"] == "b"
    assert gap["low"] <= gap["gap"] <= gap["high"]
    with pytest.raises(ValueError, match="equally long"):
        per_group_accuracy(predictions[:3], labels, groups)
