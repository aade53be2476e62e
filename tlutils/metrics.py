"""Classification metrics on label arrays (thin, checked wrappers over scikit-learn)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix
from sklearn.metrics import f1_score


def _as_labels(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}; pass one prediction per example")
    if y_true.size == 0:
        raise ValueError("no labels given: the evaluation set is empty")
    return y_true, y_pred


def accuracy(y_true, y_pred) -> float:
    """Fraction of predictions equal to the true label."""
    y_true, y_pred = _as_labels(y_true, y_pred)
    return float((y_true == y_pred).mean())


def macro_f1(y_true, y_pred) -> float:
    """F1 averaged over classes with equal weight (fair under class imbalance)."""
    y_true, y_pred = _as_labels(y_true, y_pred)
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """Counts ``C[i, j]`` of examples of true class ``i`` predicted as ``j``."""
    y_true, y_pred = _as_labels(y_true, y_pred)
    labels = np.arange(num_classes) if num_classes else None
    return _sk_confusion_matrix(y_true, y_pred, labels=labels)


METRICS = {"accuracy": accuracy, "macro_f1": macro_f1}
