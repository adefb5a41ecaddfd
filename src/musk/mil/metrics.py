"""Slide-level metrics, computed by the reference libraries (scikit-learn, scikit-survival) on our predictions.

Classification: AUROC (several classes: one-vs-rest macro over the classes present), balanced accuracy, F1
(binary: of class 1; several classes: macro). Survival: Harrell's c-index, Uno's IPCW c-index and the mean
cumulative/dynamic time-dependent AUC, the last two with the censoring distribution estimated on the training
cases.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "CLASSIFICATION_METRICS",
    "SURVIVAL_METRICS",
    "classification_metrics",
    "summarize",
    "survival_metrics",
    "td_auc_times",
    "uno_tau",
    "validation_metric",
]

logger = logging.getLogger(__name__)

CLASSIFICATION_METRICS = ("auroc", "balanced_acc", "f1")
SURVIVAL_METRICS = ("c_index", "c_index_uno", "td_auc")


def classification_metrics(labels: Sequence[int], probs: np.ndarray) -> dict[str, float]:
    """``labels`` (n,) class indices, ``probs`` (n, C) class probabilities of the model's C classes.

    AUROC: binary models, of class 1; several classes, one-vs-rest (class c's probability against "is class c")
    averaged over the classes that have both positive and negative cases here, so a cohort with only some of
    the model's classes is scored on those (with all classes present this is scikit-learn's macro OvR AUROC).
    NaN when the cases are all of one class. F1: binary, of class 1; several classes, macro over the classes
    in the labels or predictions.
    """
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    predicted = probs.argmax(1)
    present = np.unique(labels)
    if len(present) < 2:
        logger.warning("AUROC is undefined on %d cases of a single class; reported as NaN", len(labels))
        auroc = math.nan
    elif n_classes == 2:
        auroc = roc_auc_score(labels, probs[:, 1])
    else:
        if len(present) < n_classes:
            logger.warning(
                "only classes %s of %d are present; AUROC is averaged over them", present.tolist(), n_classes
            )
        auroc = float(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in present]))
    f1 = f1_score(labels, predicted, average="binary" if n_classes == 2 else "macro", zero_division=0)
    return {"auroc": float(auroc), "balanced_acc": float(balanced_accuracy_score(labels, predicted)), "f1": float(f1)}


def _structured(times: np.ndarray, events: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=np.asarray(events).astype(bool), time=np.asarray(times, dtype=np.float64))


def survival_metrics(
    times: Sequence[float],
    events: Sequence[int],
    risks: Sequence[float],
    train_times: Sequence[float] | None = None,
    train_events: Sequence[int] | None = None,
) -> dict[str, float]:
    """Metrics of ``risks`` (higher = earlier event) on the evaluated cases.

    The training cases' ``train_times`` / ``train_events`` give the censoring distribution for Uno's c-index
    (truncated at :func:`uno_tau`) and the time-dependent AUC (default: the evaluated cases' own). The AUC is
    averaged over the 25th, 50th and 75th percentiles of the observed event times before that truncation time
    (:func:`td_auc_times`).
    """
    from sksurv.metrics import concordance_index_censored, concordance_index_ipcw, cumulative_dynamic_auc

    times = np.asarray(times, dtype=np.float64)
    events = np.asarray(events).astype(bool)
    risks = np.asarray(risks, dtype=np.float64)
    if train_times is None:
        train_times, train_events = times, events
    train = _structured(train_times, train_events)
    test = _structured(times, events)
    if events.sum() == 0:
        logger.warning("no observed event among %d cases: survival metrics are NaN", len(times))
        return dict.fromkeys(SURVIVAL_METRICS, math.nan)
    harrell = concordance_index_censored(events, times, risks)[0]

    tau = uno_tau(train_times)
    try:
        uno = concordance_index_ipcw(train, test, risks, tau=tau)[0]
    except ValueError as e:
        logger.warning("Uno's c-index could not be computed: %s", e)
        uno = math.nan

    td_auc = math.nan
    grid = td_auc_times(times, events, tau)
    # Censored at tau: the AUC at times before tau is unchanged, and no weight is needed past the training follow-up.
    truncated = _structured(np.minimum(times, tau), events & (times <= tau))
    try:
        td_auc = cumulative_dynamic_auc(train, truncated, risks, grid)[1] if len(grid) else math.nan
    except ValueError as e:
        logger.warning("time-dependent AUC could not be computed: %s", e)
    return {"c_index": float(harrell), "c_index_uno": float(uno), "td_auc": float(td_auc)}


def uno_tau(train_times: Sequence[float]) -> float:
    """Truncation time of Uno's c-index: the 90th percentile of the training follow-up times, where the
    censoring distribution is still estimated from enough cases (untruncated, a few late events with tiny
    censoring weights can dominate the estimate)."""
    return float(np.quantile(np.asarray(train_times, dtype=np.float64), 0.9))


def td_auc_times(times: Sequence[float], events: Sequence[int], tau: float) -> np.ndarray:
    """The time-dependent AUC's evaluation times: quartiles of the observed event times inside the follow-up
    (at least the first time, before the last time and before ``tau``)."""
    times = np.asarray(times, dtype=np.float64)
    limit = min(times.max(), tau)
    observed = times[np.asarray(events).astype(bool) & (times < limit)]
    if not len(observed):
        return observed
    grid = np.unique(np.quantile(observed, [0.25, 0.5, 0.75]))
    return grid[(grid >= times.min()) & (grid < limit)]


def validation_metric(task: str, targets: Sequence, predictions: np.ndarray) -> float:
    """What selects a model on held-out cases; 0.5 is chance. Classification: AUROC of ``predictions`` (n, C)
    against the class indices ``targets`` (NaN with one class). Survival: Harrell's c-index of the risks
    ``predictions`` (n,) against ``targets`` = (time, event) pairs (NaN without an event)."""
    from sksurv.metrics import concordance_index_censored

    if task == "classification":
        one_class = len(np.unique(targets)) < 2
        return math.nan if one_class else classification_metrics(targets, predictions)["auroc"]
    times, events = np.asarray(targets, dtype=np.float64).reshape(-1, 2).T
    if not events.any():
        return math.nan
    return float(concordance_index_censored(events.astype(bool), times, np.asarray(predictions, np.float64))[0])


def summarize(per_fold: Sequence[dict[str, float]], names: Sequence[str]) -> dict[str, dict]:
    """``{metric: {"folds": [...], "mean": m, "std": s}}``; std is the sample std (ddof 1) over the folds,
    NaN folds left out of mean and std."""
    summary = {}
    for name in names:
        values = [float(f[name]) for f in per_fold]
        finite = np.array([v for v in values if not math.isnan(v)])
        mean = float(finite.mean()) if len(finite) else math.nan
        std = float(finite.std(ddof=1)) if len(finite) > 1 else (0.0 if len(finite) else math.nan)
        summary[name] = {"folds": values, "mean": mean, "std": std}
    return summary
