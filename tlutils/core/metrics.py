"""Every metric of the course: classification, detection, segmentation, QA, generation, speech.

Classification: :func:`accuracy`, :func:`macro_f1`, :func:`confusion_matrix` and the
binomial :func:`accuracy_standard_error`; :func:`screening_scores` (sensitivity and
specificity of one positive class); :func:`separation_score` for 2-D projections.
Detection: :func:`box_iou` and :func:`detection_scores` (AP at an IoU threshold).
Segmentation: :func:`mask_iou`. Extractive QA: :func:`exact_match`, :func:`token_f1`,
:func:`qa_scores` (SQuAD-style). Generation: :func:`rouge_scores` (ROUGE-1/2/L F1 on
lower-cased word tokens, no stemming). Speech: :func:`word_error_rate`.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

import numpy as np
import torch
import torch.fx
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


def screening_scores(y_true, y_pred, positive: int) -> dict[str, float]:
    """Accuracy, sensitivity and specificity for one class treated as "positive" (a lesion, fraud, ...).

    Sensitivity (recall) is the share of true positives found; specificity the share of the
    other examples left alone. A class with no examples gives ``nan`` for its rate.

    Args:
        y_true: True labels.
        y_pred: Predicted labels, one per example.
        positive: The label that counts as positive.

    Returns:
        ``{"accuracy", "sensitivity", "specificity"}``.

    Example:
        >>> screening_scores([1, 1, 0, 0], [1, 0, 0, 0], positive=1)["sensitivity"]
        0.5
    """
    y_true, y_pred = _as_labels(y_true, y_pred)
    is_positive = y_true == positive
    rate = lambda hits: float(hits.mean()) if hits.size else float("nan")
    return {"accuracy": accuracy(y_true, y_pred), "sensitivity": rate(y_pred[is_positive] == positive),
            "specificity": rate(y_pred[~is_positive] != positive)}


METRICS = {"accuracy": accuracy, "macro_f1": macro_f1}


def accuracy_standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` examples: ``sqrt(p (1 - p) / n)``."""
    if n < 1 or not 0 <= accuracy <= 1:
        raise ValueError(f"need n >= 1 and an accuracy in [0, 1], got n={n}, accuracy={accuracy}")
    return float(np.sqrt(accuracy * (1 - accuracy) / n))


def separation_score(points: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette score of the classes in a projection: near 1 = tight separate clusters, near 0 = mixed."""
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(np.asarray(points), np.asarray(labels)))


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair of ``(xmin, ymin, xmax, ymax)`` boxes.

    Returns:
        ``len(boxes_a) x len(boxes_b)`` array.
    """
    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _match_image(pred_boxes: np.ndarray, scores: np.ndarray, true_boxes: np.ndarray,
                 iou_threshold: float) -> np.ndarray:
    """Greedy matching by score: 1 for a prediction that claims an unclaimed true box."""
    order = np.argsort(-scores, kind="stable")
    ious = box_iou(pred_boxes[order], true_boxes)
    taken = np.zeros(len(true_boxes), bool)
    hits = np.zeros(len(order), bool)
    for rank in range(len(order)):
        if not len(true_boxes):
            break
        candidates = np.where(taken, -1.0, ious[rank])
        best = int(candidates.argmax())
        if candidates[best] >= iou_threshold:
            taken[best], hits[rank] = True, True
    correct = np.zeros(len(order), bool)
    correct[order] = hits
    return correct


def detection_scores(predictions: Sequence[dict], true_boxes: Sequence[np.ndarray],
                     iou_threshold: float = 0.5, score_threshold: float = 0.5) -> dict:
    """Average precision and recall of one-class detections at an IoU threshold.

    A prediction is a true positive when its IoU with a not-yet-matched true box is
    at least ``iou_threshold`` (higher-scoring predictions match first). AP is the
    area under the precision-recall curve over all scores (all-point interpolation,
    as in Pascal VOC since 2010 and COCO's AP50); with one class it equals mAP@0.5.

    Args:
        predictions: One dict per image with ``boxes`` and ``scores`` (from :func:`predict_boxes`).
        true_boxes: One ``K x 4`` array per image.
        iou_threshold: Overlap a match needs (0.5 is the classic choice).
        score_threshold: Boxes scoring at least this count for ``recall`` and ``precision``.

    Returns:
        ``{"ap": ..., "recall": ..., "precision": ..., "max_recall": ..., "n_true": ...}``;
        ``max_recall`` uses every predicted box whatever its score.
    """
    if len(predictions) != len(true_boxes):
        raise ValueError(f"{len(predictions)} predictions but {len(true_boxes)} images of true boxes")
    scores, correct = [], []
    for pred, truth in zip(predictions, true_boxes):
        scores.append(np.asarray(pred["scores"], np.float64))
        correct.append(_match_image(np.asarray(pred["boxes"]).reshape(-1, 4), scores[-1],
                                    np.asarray(truth).reshape(-1, 4), iou_threshold))
    scores, correct = np.concatenate(scores), np.concatenate(correct)
    n_true = int(sum(len(np.asarray(t).reshape(-1, 4)) for t in true_boxes))
    if n_true == 0:
        raise ValueError("there are no true boxes: average precision is undefined")
    order = np.argsort(-scores, kind="stable")
    true_pos = np.cumsum(correct[order])
    recall_curve = true_pos / n_true
    precision_curve = true_pos / np.arange(1, len(order) + 1)
    confident = scores >= score_threshold
    return {"ap": _area_under_pr(recall_curve, precision_curve),
            "recall": float(correct[confident].sum() / n_true),
            "precision": float(correct[confident].mean()) if confident.any() else 0.0,
            "max_recall": float(recall_curve[-1]) if len(order) else 0.0, "n_true": n_true}


def _area_under_pr(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated area under a precision-recall curve."""
    if not len(recall):
        return 0.0
    recall = np.concatenate([[0.0], recall, [recall[-1]]])
    precision = np.concatenate([[1.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def mask_iou(predicted: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor) -> float:
    """Intersection over union of two sets of binary masks, pooled over all pixels.

    Args:
        predicted: Boolean (or 0/1) masks, any shape.
        true: Masks of the same shape.

    Returns:
        IoU in [0, 1]; 1.0 when both are empty.
    """
    predicted, true = np.asarray(predicted).astype(bool), np.asarray(true).astype(bool)
    if predicted.shape != true.shape:
        raise ValueError(f"predicted {predicted.shape} and true {true.shape} masks differ in shape")
    union = np.logical_or(predicted, true).sum()
    return 1.0 if union == 0 else float(np.logical_and(predicted, true).sum() / union)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    """1.0 when the normalised prediction equals the normalised true answer, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(truth))


def _f1(overlap: int, n_predicted: int, n_reference: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / n_predicted, overlap / n_reference
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, truth: str) -> float:
    """SQuAD F1: harmonic mean of word precision and recall between prediction and answer.

    Example:
        >>> token_f1("Mr Tony Blair", "Tony Blair")   # precision 2/3, recall 1
        0.8
    """
    predicted, true = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not predicted or not true:
        return float(predicted == true)
    return _f1(sum((Counter(predicted) & Counter(true)).values()), len(predicted), len(true))


def qa_scores(predictions: Sequence[str], truths: Sequence[str]) -> dict[str, float]:
    """Mean exact match and F1 over a question set, as fractions: ``{"exact_match": .., "f1": ..}``."""
    if len(predictions) != len(truths) or not truths:
        raise ValueError(f"need one prediction per question, got {len(predictions)} for {len(truths)}")
    return {"exact_match": float(np.mean([exact_match(p, t) for p, t in zip(predictions, truths)])),
            "f1": float(np.mean([token_f1(p, t) for p, t in zip(predictions, truths)]))}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge_n(prediction: str, reference: str, n: int = 1) -> float:
    """ROUGE-N F1: overlap of word n-grams (lower-cased letters and digits, no stemming)."""
    def grams(words):
        return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))

    predicted, reference_grams = grams(_words(prediction)), grams(_words(reference))
    overlap = sum((predicted & reference_grams).values())
    return _f1(overlap, sum(predicted.values()), sum(reference_grams.values()))


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        previous = 0
        for j, y in enumerate(b, start=1):
            previous, row[j] = row[j], previous + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of words, as precision and recall."""
    predicted, reference_words = _words(prediction), _words(reference)
    return _f1(_lcs_length(predicted, reference_words), len(predicted), len(reference_words))


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 (fractions, 0-1) over pairs of texts."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"need one prediction per reference, got {len(predictions)} for {len(references)}")
    pairs = list(zip(predictions, references))
    return {"rouge1": float(np.mean([rouge_n(p, r, 1) for p, r in pairs])),
            "rouge2": float(np.mean([rouge_n(p, r, 2) for p, r in pairs])),
            "rougeL": float(np.mean([rouge_l(p, r) for p, r in pairs]))}


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance divided by the reference length (case and punctuation ignored)."""
    ref, hyp = re.findall(r"[\w']+", reference.lower()), re.findall(r"[\w']+", hypothesis.lower())
    if not ref:
        raise ValueError("the reference transcript has no words")
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, guess in enumerate(hyp, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != guess))
    return row[-1] / len(ref)
