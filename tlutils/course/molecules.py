"""Healthcare by example: molecule property prediction and what a medical model must report.

Two parts, both on real measurements:

* **Drug discovery.** Aqueous solubility of 1,282 molecules (the packaged 1,025 train / 257 test
  split). The baseline a team ships is Morgan (ECFP-like) fingerprints with a ridge or random-forest
  regressor; the transfer arm is a frozen ImageNet MobileNetV2 run on RDKit 2-D depictions of the
  molecules (a weak form of transfer, tried in the literature). Both arms pick their regressor and
  its strength on a validation split of the training molecules; :func:`~tlutils.core.compare.compare`
  scores the packaged test split once per arm and seed. :func:`split_gap` measures how much a random
  validation split flatters a model compared with a Murcko-scaffold split.
* **Medical practice.** Alzheimer's biomarkers (modeldata's ``ad_data``, 333 patients x 131):
  sensitivity at a fixed specificity with the threshold chosen on validation, and calibration
  (expected calibration error) before and after temperature scaling fitted on validation.

RDKit is needed for the molecule part only (``pip install rdkit``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlutils.core.compare import Budget, Comparison, Outcome, Trial, best_on_validation, compare

#: Regressor options every molecule arm searches on validation: ridge strengths, then a random forest.
REGRESSOR_OPTIONS = (("ridge", 1.0), ("ridge", 10.0), ("ridge", 100.0), ("ridge", 1000.0), ("forest", "sqrt"))

#: ImageNet statistics for the depictions fed to MobileNetV2.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _rdkit():
    try:
        from rdkit import Chem, RDLogger
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the molecule part needs RDKit: pip install rdkit") from error
    RDLogger.DisableLog("rdApp.*")
    return Chem


def _molecules(smiles: Sequence[str]) -> list:
    """Parse SMILES strings; raise on an empty list or one that RDKit cannot read."""
    Chem = _rdkit()
    if isinstance(smiles, str) or len(smiles) == 0:
        raise ValueError("smiles must be a non-empty sequence of SMILES strings, e.g. ['CCO', 'c1ccccc1']")
    molecules = []
    for index, text in enumerate(smiles):
        molecule = Chem.MolFromSmiles(text) if isinstance(text, str) and text else None
        if molecule is None:
            raise ValueError(f"smiles[{index}] = {text!r} is not a SMILES string RDKit can parse")
        molecules.append(molecule)
    return molecules


def morgan_fingerprints(smiles: Sequence[str], radius: int = 2, bits: int = 2048) -> np.ndarray:
    """Morgan (ECFP-like) count fingerprints, the standard from-scratch molecule representation.

    Args:
        smiles: SMILES strings.
        radius: Bond radius (2 is ECFP4).
        bits: Length of the folded vector.

    Returns:
        ``len(smiles) x bits`` float32 array of substructure counts.

    Raises:
        ValueError: Empty input, an unparsable SMILES, or a non-positive radius or size.
    """
    from rdkit.Chem import rdFingerprintGenerator

    if radius < 1 or bits < 1:
        raise ValueError(f"radius and bits must be positive, got radius={radius}, bits={bits}")
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits)
    return np.stack([generator.GetCountFingerprintAsNumPy(m) for m in _molecules(smiles)]).astype(np.float32)


def murcko_scaffolds(smiles: Sequence[str]) -> list[str]:
    """The Bemis-Murcko scaffold (ring systems and linkers) of each molecule, as SMILES ('' for acyclic)."""
    from rdkit.Chem.Scaffolds import MurckoScaffold

    Chem = _rdkit()
    return [Chem.MolToSmiles(MurckoScaffold.GetScaffoldForMol(m)) for m in _molecules(smiles)]


class DepictionDataset(Dataset):
    """RDKit 2-D drawings of molecules as ``3 x size x size`` uint8 tensors, drawn on demand.

    The data set fingerprints itself from the SMILES and the size, so a feature cache can be
    checked without drawing anything.

    Args:
        smiles: SMILES strings.
        targets: One number per molecule (returned as the label).
        size: Image side in pixels.
    """

    def __init__(self, smiles: Sequence[str], targets: Sequence[float], size: int = 224):
        self.molecules = _molecules(smiles)
        self.smiles = list(smiles)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))
        if len(self.targets) != len(self.smiles):
            raise ValueError(f"{len(self.smiles)} molecules but {len(self.targets)} targets")
        if size < 32:
            raise ValueError(f"size must be at least 32 pixels, got {size}")
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.smiles)

    def __getitem__(self, index: int):
        from rdkit.Chem import Draw

        image = Draw.MolToImage(self.molecules[index], size=(self.size, self.size)).convert("RGB")
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1), self.targets[index]

    def fingerprint(self) -> str:
        """A content hash of the SMILES, the targets and the drawing size."""
        digest = hashlib.sha256(f"depictions:{self.size}".encode())
        digest.update("\n".join(self.smiles).encode())
        digest.update(self.targets.numpy().tobytes())
        return digest.hexdigest()


class ImageNetEncoder(nn.Module):
    """uint8 images -> ImageNet normalisation -> a frozen backbone -> global average pool."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features.eval()
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() / 255.0 - self.mean) / self.std
        return self.features(x).mean(dim=(2, 3))


def depiction_features(smiles: Sequence[str], targets: Sequence[float], size: int = 224,
                       cache_name: str | None = None, progress: bool = True) -> np.ndarray:
    """Frozen ImageNet MobileNetV2 features (1,280-d) of RDKit depictions, cached.

    Args:
        smiles: SMILES strings.
        targets: One number per molecule (part of the cache key only).
        size: Depiction side in pixels.
        cache_name: Feature-cache file name (see :func:`tlutils.core.features.extract_features`).
        progress: Show a progress bar while extracting.

    Returns:
        ``len(smiles) x 1280`` float32 array.
    """
    from tlutils.core.features import extract_features
    from tlutils.core.models import load_mobilenet_v2

    encoder = ImageNetEncoder(load_mobilenet_v2(pretrained=True).features)
    loader = DataLoader(DepictionDataset(smiles, targets, size), batch_size=64, shuffle=False)
    features, _ = extract_features(encoder, loader, cache_name=cache_name, fingerprint=f"depict{size}",
                                   device=torch.device("cpu"), progress=progress)
    return features.numpy().astype(np.float32)


def rmse(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Root mean squared error."""
    truth, predicted = np.asarray(truth, dtype=float), np.asarray(predicted, dtype=float)
    if truth.shape != predicted.shape or truth.size == 0:
        raise ValueError(f"truth {truth.shape} and predictions {predicted.shape} must be equal, non-empty shapes")
    return float(np.sqrt(np.mean((truth - predicted) ** 2)))


def fit_regressor(option: tuple, features: np.ndarray, targets: np.ndarray, seed: int = 0):
    """Fit one regressor option: ``("ridge", alpha)`` (on standardised inputs) or ``("forest", max_features)``.

    Raises:
        ValueError: An unknown option kind.
    """
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    kind, value = option
    if kind == "ridge":
        model = make_pipeline(StandardScaler(), Ridge(alpha=value))
    elif kind == "forest":
        model = RandomForestRegressor(n_estimators=100, max_features=value, min_samples_leaf=1,
                                      random_state=seed, n_jobs=1)
    else:
        raise ValueError(f"unknown regressor {kind!r}; use 'ridge' or 'forest'")
    return model.fit(features, targets)


def random_split(n: int, seed: int, val_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation indices of ``n`` items."""
    if not 0 < val_fraction < 1 or n < 2:
        raise ValueError(f"need n >= 2 and 0 < val_fraction < 1, got n={n}, val_fraction={val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, int(round(n * val_fraction)))
    return np.sort(order[cut:]), np.sort(order[:cut])


def scaffold_split(scaffolds: Sequence[str], seed: int, val_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices with whole scaffold groups held out (no scaffold on both sides).

    Scaffolds are taken in a seeded random order until the validation side holds about
    ``val_fraction`` of the molecules.
    """
    scaffolds = np.asarray(list(scaffolds), dtype=object)
    if not 0 < val_fraction < 1 or len(scaffolds) < 2:
        raise ValueError("need at least 2 molecules and 0 < val_fraction < 1")
    groups = np.unique(scaffolds)
    rng = np.random.default_rng(seed)
    val, target = [], val_fraction * len(scaffolds)
    for group in rng.permutation(groups):
        if len(val) >= target:
            break
        val.extend(np.flatnonzero(scaffolds == group))
    val = np.sort(np.asarray(val, dtype=int))
    train = np.setdiff1d(np.arange(len(scaffolds)), val)
    if len(train) == 0:
        raise ValueError("one scaffold holds every molecule; a scaffold split is impossible")
    return train, val


def molecule_arm(features: np.ndarray, targets: np.ndarray, options: Sequence = REGRESSOR_OPTIONS,
                 name: str = "arm"):
    """An arm ``arm(trial) -> Outcome`` for :func:`compare`: pick a regressor on a seeded random validation split.

    The validation score is minus the RMSE (higher is better); the chosen regressor is
    refitted on train + validation before the protocol scores the test split. Each model fit
    counts as one step, so every arm spends ``len(options) + 1`` fits.

    Args:
        features: Training-molecule features, one row per molecule.
        targets: Their measured values.
        options: Regressor options (see :func:`fit_regressor`).
        name: The representation's name; the Outcome's predictor is ``(name, fitted model)``.
    """
    features, targets = np.asarray(features, dtype=np.float32), np.asarray(targets, dtype=float)
    if features.ndim != 2 or len(features) != len(targets) or not np.isfinite(features).all():
        raise ValueError(f"features must be a finite 2-D array with one row per target, got {features.shape} "
                         f"for {len(targets)} targets")

    def arm(trial: Trial) -> Outcome:
        train, val = random_split(len(targets), trial.seed)

        def run(option):
            model = fit_regressor(option, features[train], targets[train], trial.seed)
            return Outcome(None, val=-rmse(targets[val], model.predict(features[val])), steps=1,
                           trainable_params=0)

        best = best_on_validation(list(options), run, name="regressor")
        final = fit_regressor(best.choice["regressor"], features, targets, trial.seed)
        return Outcome((name, final), val=best.val, steps=best.steps + 1, trainable_params=0, choice=best.choice)

    return arm


def compare_molecule_representations(train_features: dict[str, np.ndarray], train_targets: np.ndarray,
                                     test_features: dict[str, np.ndarray], test_targets: np.ndarray,
                                     seeds: Sequence[int], options: Sequence = REGRESSOR_OPTIONS,
                                     progress: bool = True) -> Comparison:
    """Compare molecule representations through the protocol; scores are minus the RMSE.

    Args:
        train_features: Representation name -> training-molecule features.
        train_targets: Measured values of the training molecules.
        test_features: Representation name -> test-molecule features (same names).
        test_targets: Measured values of the test molecules (scored once per arm and seed).
        seeds: Seeds (one random train/validation split and forest seed each).
        options: Regressor options each arm searches on validation.
        progress: Show the protocol's progress bar.

    Returns:
        A :class:`~tlutils.core.compare.Comparison` with metric ``"-RMSE"``.
    """
    if set(train_features) != set(test_features) or not train_features:
        raise ValueError(f"train and test need the same representations, got {sorted(train_features)} "
                         f"and {sorted(test_features)}")
    arms = {name: molecule_arm(train_features[name], train_targets, options, name) for name in train_features}
    test_targets = np.asarray(test_targets, dtype=float)

    def score_test(outcome: Outcome) -> float:
        name, model = outcome.predictor
        return -rmse(test_targets, model.predict(test_features[name]))

    return compare(arms, seeds=seeds, budget=Budget(steps=len(options) + 1), score_test=score_test, metric="-RMSE",
                   progress=progress)


def split_gap(features: np.ndarray, targets: np.ndarray, scaffolds: Sequence[str], seeds: Sequence[int],
              option: tuple = ("forest", "sqrt")) -> pd.DataFrame:
    """Validation RMSE of one model under a random split and under a scaffold split, per seed.

    Args:
        features: Features of the training molecules.
        targets: Their measured values.
        scaffolds: Their Murcko scaffolds (see :func:`murcko_scaffolds`).
        seeds: Seeds; each gives one random and one scaffold split of the same size.
        option: The regressor (see :func:`fit_regressor`).

    Returns:
        One row per seed: ``seed``, ``random`` and ``scaffold`` RMSE and ``gap`` (scaffold - random).
    """
    targets = np.asarray(targets, dtype=float)
    if len(scaffolds) != len(targets) or len(features) != len(targets):
        raise ValueError(f"{len(features)} feature rows, {len(targets)} targets, {len(scaffolds)} scaffolds")
    rows = []
    for seed in seeds:
        row = {"seed": seed}
        for kind, split in (("random", random_split(len(targets), seed)), ("scaffold", scaffold_split(scaffolds, seed))):
            train, val = split
            model = fit_regressor(option, features[train], targets[train], seed)
            row[kind] = rmse(targets[val], model.predict(features[val]))
        rows.append(row)
    table = pd.DataFrame(rows)
    table["gap"] = table["scaffold"] - table["random"]
    return table


# ---------------------------------------------------------------- medical practice: ad_data
def load_ad_data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """modeldata's ``ad_data``: 333 patients, 130 biomarkers/demographics, ``Class`` Impaired (91) / Control.

    Returns:
        ``(X, y, names)``: float array (``Genotype`` one-hot, ``male`` 0/1, the rest as measured),
        ``y`` 1 for Impaired, and the column names.
    """
    from tlutils.core.tables import _r_data

    table = _r_data("credit_data", "ad_data", 333, 131, "Class", ("Impaired", 91))
    y = (table.pop("Class") == "Impaired").to_numpy(dtype=int)
    table = pd.get_dummies(table, columns=["Genotype"], dtype=float)
    table = table.astype(float)
    if table.isna().any().any():
        raise ValueError("ad_data has missing values; the loader expects none")
    return table.to_numpy(), y, list(table.columns)


def threshold_at_specificity(scores: np.ndarray, labels: np.ndarray, specificity: float = 0.9) -> float:
    """The lowest threshold whose specificity on (validation) negatives is at least ``specificity``.

    Predictions are ``score > threshold``.

    Raises:
        ValueError: No negatives, or a specificity outside (0, 1).
    """
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    negatives = np.sort(scores[labels == 0])
    if not 0 < specificity < 1 or len(negatives) == 0:
        raise ValueError(f"need negatives and 0 < specificity < 1, got {len(negatives)} negatives, {specificity}")
    return float(negatives[int(np.ceil(specificity * len(negatives))) - 1])


def sensitivity_specificity(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity of ``score > threshold``."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    if not (labels == 1).any() or not (labels == 0).any():
        raise ValueError("need both positives and negatives")
    predicted = scores > threshold
    return float(predicted[labels == 1].mean()), float((~predicted[labels == 0]).mean())


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the bin-size-weighted gap between mean predicted probability and frequency.

    Raises:
        ValueError: Mismatched lengths, probabilities outside [0, 1], or fewer than 1 bin.
    """
    p, labels = np.asarray(probabilities, dtype=float), np.asarray(labels, dtype=float)
    if p.shape != labels.shape or p.size == 0 or bins < 1 or (p < 0).any() or (p > 1).any():
        raise ValueError("probabilities must lie in [0, 1], match the labels in length, and bins >= 1")
    index = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            total += inside.mean() * abs(p[inside].mean() - labels[inside].mean())
    return float(total)


def reliability_curve(probabilities: np.ndarray, labels: np.ndarray, bins: int = 5) -> pd.DataFrame:
    """Mean predicted probability and observed frequency per equal-width bin (empty bins dropped)."""
    p, labels = np.asarray(probabilities, dtype=float), np.asarray(labels, dtype=float)
    index = np.minimum((p * bins).astype(int), bins - 1)
    rows = [{"predicted": p[index == b].mean(), "observed": labels[index == b].mean(), "n": int((index == b).sum())}
            for b in range(bins) if (index == b).any()]
    return pd.DataFrame(rows)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the log loss of ``sigmoid(logits / T)`` (fitted on validation)."""
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, dtype=float), np.asarray(labels, dtype=float)
    if logits.shape != labels.shape or logits.size == 0:
        raise ValueError("logits and labels must be non-empty and of equal length")

    def loss(log_t: float) -> float:
        z = logits / np.exp(log_t)
        return float(np.mean(np.logaddexp(0, z) - labels * z))

    return float(np.exp(minimize_scalar(loss, bounds=(-3, 5), method="bounded").x))


def medical_run(X: np.ndarray, y: np.ndarray, seed: int, specificity: float = 0.9,
                strengths: Sequence[float] = (0.01, 0.1, 1.0, 10.0)) -> dict:
    """One seed of the medical-practice study: 60/20/20 stratified split, logistic regression.

    The regularisation strength (C, chosen by validation log loss), the threshold for the target
    specificity and the temperature are all fitted on validation; the test split is scored once.

    Returns:
        A dict with ``seed``, ``C``, ``auc``, ``sensitivity``, ``specificity`` (test, at the
        validation threshold), ``ece_raw``, ``ece_scaled``, ``temperature``, ``prevalence`` and the
        test ``p_raw``, ``p_scaled``, ``labels`` arrays.
    """
    from scipy.special import expit
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = np.asarray(X, dtype=float), np.asarray(y)
    if len(X) != len(y) or set(np.unique(y)) != {0, 1}:
        raise ValueError("X and y must have equal length and y must hold both 0 and 1")
    rest, test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=0.25, stratify=y[rest], random_state=seed)
    fits = {C: make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000)).fit(X[train], y[train])
            for C in strengths}
    C = min(strengths, key=lambda c: log_loss(y[val], fits[c].predict_proba(X[val])[:, 1]))
    model = fits[C]
    val_logit, test_logit = model.decision_function(X[val]), model.decision_function(X[test])
    threshold = threshold_at_specificity(val_logit, y[val], specificity)
    sens, spec = sensitivity_specificity(test_logit, y[test], threshold)
    temperature = fit_temperature(val_logit, y[val])
    p_raw, p_scaled = expit(test_logit), expit(test_logit / temperature)
    return {"seed": seed, "C": C, "auc": float(roc_auc_score(y[test], test_logit)), "sensitivity": sens,
            "specificity": spec, "ece_raw": expected_calibration_error(p_raw, y[test]),
            "ece_scaled": expected_calibration_error(p_scaled, y[test]), "temperature": temperature,
            "prevalence": float(y[test].mean()), "p_raw": p_raw, "p_scaled": p_scaled, "labels": y[test]}


def ppv_at_prevalence(sensitivity: float, specificity: float, prevalence: float) -> float:
    """Positive predictive value for a given sensitivity, specificity and prevalence (Bayes' rule)."""
    if not all(0 <= v <= 1 for v in (sensitivity, specificity, prevalence)):
        raise ValueError("sensitivity, specificity and prevalence must lie in [0, 1]")
    hits = sensitivity * prevalence
    false_alarms = (1 - specificity) * (1 - prevalence)
    return float(hits / (hits + false_alarms)) if hits + false_alarms > 0 else float("nan")


def solubility_smiles() -> tuple[list[str], list[str]]:
    """Canonical SMILES of the solubility molecules, read from the SD files' structures by RDKit.

    A few of the SMILES fields in the packaged files are not valid SMILES (e.g. ``n(H)...``); the
    atom blocks are, so RDKit rebuilds every molecule from them. The order matches
    :func:`tlutils.core.tables.load_solubility` (train file, then test file).

    Returns:
        ``(train_smiles, test_smiles)``: 1,025 and 257 canonical SMILES.
    """
    from tlutils.core.assets import resolve

    Chem = _rdkit()
    folder = resolve("solubility").path
    out = []
    for split in ("train", "test"):
        molecules = list(Chem.SDMolSupplier(str(folder / f"solubility.{split}.sdf")))
        if any(m is None for m in molecules):
            raise ValueError(f"RDKit could not read {sum(m is None for m in molecules)} molecules of {split}")
        out.append([Chem.MolToSmiles(m) for m in molecules])
    return out[0], out[1]
