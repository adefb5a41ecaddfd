"""Metric functions shared by the tasks: plain numpy in, plain Python numbers out (JSON-ready).

Ranking conventions, used everywhere in the suite: scores are sorted in descending order with a stable
sort, so of two equal scores the item with the lower index ranks first; a vote between equally frequent
labels goes to the lowest label (``numpy.argmax`` and scikit-learn's ``KNeighborsClassifier`` do the same).
A ``k`` larger than the number of candidates means "all candidates".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_metrics(labels: np.ndarray, scores: np.ndarray, num_classes: int) -> dict:
    """Balanced accuracy, accuracy, top-5 accuracy (more than 5 classes), weighted F1, per-class recall and the
    confusion matrix (rows: true class, columns: predicted) of ``scores`` (N, C) against ``labels`` (N,)."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, recall_score

    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(labels), num_classes):
        raise ValueError(f"scores have shape {scores.shape}, expected ({len(labels)}, {num_classes})")
    if len(labels) == 0:
        raise ValueError("no samples to evaluate")
    predictions = scores.argmax(axis=1)
    classes = np.arange(num_classes)
    metrics = {
        "balanced_acc": float(balanced_accuracy_score(labels, predictions)),
        "acc1": float(np.mean(predictions == labels)),
    }
    if num_classes > 5:
        metrics["acc5"] = topk_accuracy(labels, scores, 5)
    metrics["weighted_f1"] = float(f1_score(labels, predictions, labels=classes, average="weighted", zero_division=0))
    metrics["per_class_recall"] = [
        float(r) for r in recall_score(labels, predictions, labels=classes, average=None, zero_division=0)
    ]
    metrics["confusion_matrix"] = confusion_matrix(labels, predictions, labels=classes).tolist()
    return metrics


def topk_accuracy(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the ``k`` best scores (stable ranking, see the module doc)."""
    order = stable_descending(scores)[:, :k]
    return float(np.mean((order == np.asarray(labels)[:, None]).any(axis=1)))


def auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """ROC AUC: of class 1 for two classes, else one-vs-rest macro average; NaN when a class is absent."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    num_classes = probabilities.shape[1]
    if len(np.unique(labels)) < num_classes:
        return float("nan")
    if num_classes == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    return float(
        roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=np.arange(num_classes))
    )


def stable_descending(scores: np.ndarray) -> np.ndarray:
    """Column indices of each row sorted by descending score; equal scores keep their index order."""
    return np.argsort(-np.asarray(scores), axis=1, kind="stable")


def recall_at_k(scores: np.ndarray, positives: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """For each query row of ``scores`` (Q, M) and boolean ``positives`` (Q, M): the fraction of queries with at
    least one positive among their ``k`` best candidates. Queries without any positive count as misses."""
    positives = np.asarray(positives, dtype=bool)
    if scores.shape != positives.shape:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} differ in shape")
    ranked_positive = np.take_along_axis(positives, stable_descending(scores), axis=1)
    # first_hit[q]: rank (0-based) of the best-ranked positive, or M when there is none
    first_hit = np.where(ranked_positive.any(axis=1), ranked_positive.argmax(axis=1), scores.shape[1])
    return {int(k): float(np.mean(first_hit < k)) for k in ks}


def majority_vote(neighbour_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The most frequent label of each row; ties go to the lowest label."""
    counts = np.zeros((len(neighbour_labels), num_classes), dtype=np.int64)
    rows = np.repeat(np.arange(len(neighbour_labels)), neighbour_labels.shape[1])
    np.add.at(counts, (rows, neighbour_labels.ravel()), 1)
    return counts.argmax(axis=1)
