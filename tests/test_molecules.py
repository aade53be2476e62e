"""Fast tests of tlutils.course.molecules on tiny synthetic inputs."""

import numpy as np
import pytest

from tlutils.course import molecules as mol

rdkit = pytest.importorskip("rdkit")

SMILES = ["CCO", "c1ccccc1", "c1ccccc1O", "CC(=O)O", "C1CCCCC1", "c1ccncc1C", "CCN", "c1ccccc1CC"]


def test_fingerprints_and_scaffolds():
    fingerprints = mol.morgan_fingerprints(SMILES, bits=256)
    assert fingerprints.shape == (8, 256) and (fingerprints >= 0).all()
    scaffolds = mol.murcko_scaffolds(SMILES)
    assert scaffolds[0] == "" and scaffolds[1] == scaffolds[2] == "c1ccccc1"


@pytest.mark.parametrize("bad", [[], "CCO", ["CCO", "not a molecule"], [None]])
def test_bad_smiles_raise(bad):
    with pytest.raises(ValueError):
        mol.morgan_fingerprints(bad)


def test_depiction_dataset():
    data = mol.DepictionDataset(SMILES[:2], [1.0, 2.0], size=48)
    image, target = data[1]
    assert image.shape == (3, 48, 48) and image.dtype.is_floating_point is False and float(target) == 2.0
    assert data.fingerprint() == mol.DepictionDataset(SMILES[:2], [1.0, 2.0], size=48).fingerprint()
    assert data.fingerprint() != mol.DepictionDataset(SMILES[:2], [1.0, 2.0], size=64).fingerprint()
    with pytest.raises(ValueError):
        mol.DepictionDataset(SMILES[:2], [1.0], size=48)


def test_splits():
    train, val = mol.random_split(10, seed=0)
    assert len(val) == 2 and set(train) | set(val) == set(range(10)) and not set(train) & set(val)
    scaffolds = ["a"] * 4 + ["b"] * 3 + ["c"] * 3
    train, val = mol.scaffold_split(scaffolds, seed=1, val_fraction=0.3)
    assert not {scaffolds[i] for i in train} & {scaffolds[i] for i in val}
    with pytest.raises(ValueError):
        mol.scaffold_split(["a"] * 5, seed=0)
    with pytest.raises(ValueError):
        mol.random_split(10, seed=0, val_fraction=1.5)


def test_comparison_protocol_on_synthetic_features():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    y = X[:, 0] * 2 + rng.normal(scale=0.1, size=60)
    good, noise = {"good": X[:40]}, {"noise": rng.normal(size=(40, 3)).astype(np.float32)}
    train = {**good, **noise}
    test = {"good": X[40:], "noise": rng.normal(size=(20, 3)).astype(np.float32)}
    result = mol.compare_molecule_representations(train, y[:40], test, y[40:], seeds=[0, 1, 2],
                                                  options=[("ridge", 1.0), ("ridge", 10.0)], progress=False)
    assert (result.table.steps == 3).all()
    gap, _ = result.paired_difference("good", "noise")
    assert gap > 0
    with pytest.raises(ValueError):
        mol.compare_molecule_representations({"good": X[:40]}, y[:40], {"other": X[40:]}, y[40:], seeds=[0])
    with pytest.raises(ValueError):
        mol.fit_regressor(("svm", 1.0), X, y)
    with pytest.raises(ValueError):
        mol.molecule_arm(np.full((4, 2), np.nan), np.zeros(4))


def test_split_gap_table():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 4))
    table = mol.split_gap(X, X[:, 0], ["s" + str(i % 6) for i in range(30)], [0, 1], option=("ridge", 1.0))
    assert list(table.columns) == ["seed", "random", "scaffold", "gap"] and len(table) == 2
    with pytest.raises(ValueError):
        mol.split_gap(X, X[:, 0], ["a"], [0])


def test_medical_metrics():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    threshold = mol.threshold_at_specificity(scores, labels, 0.75)
    sens, spec = mol.sensitivity_specificity(scores, labels, threshold)
    assert spec >= 0.75 and sens == 1.0
    assert mol.expected_calibration_error(np.array([0.0, 1.0]), np.array([0, 1])) == 0.0
    assert mol.expected_calibration_error(np.array([0.9, 0.9]), np.array([0, 0])) == pytest.approx(0.9)
    assert mol.ppv_at_prevalence(0.8, 0.9, 0.05) < mol.ppv_at_prevalence(0.8, 0.9, 0.3)
    assert len(mol.reliability_curve(scores, labels, bins=5)) == 5
    with pytest.raises(ValueError):
        mol.expected_calibration_error(np.array([1.5]), np.array([1]))
    with pytest.raises(ValueError):
        mol.threshold_at_specificity(scores, np.ones(10), 0.9)
    with pytest.raises(ValueError):
        mol.ppv_at_prevalence(1.2, 0.9, 0.1)


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(scale=2.0, size=4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-true_logits))).astype(float)
    assert mol.fit_temperature(3 * true_logits, labels) == pytest.approx(3.0, rel=0.15)
    with pytest.raises(ValueError):
        mol.fit_temperature(np.array([]), np.array([]))


def test_medical_run_on_synthetic_table():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 4))
    y = (X[:, 0] + rng.normal(scale=0.5, size=150) > 0.5).astype(int)
    run = mol.medical_run(X, y, seed=0)
    assert run["auc"] > 0.8 and 0 <= run["ece_raw"] <= 1 and len(run["p_raw"]) == 30
    with pytest.raises(ValueError):
        mol.medical_run(X, np.zeros(150), seed=0)
