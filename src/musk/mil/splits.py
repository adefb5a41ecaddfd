"""Patient-level splits: folds over cases (never slides), stratified, with a validation part inside training."""

from __future__ import annotations

import numpy as np

from .manifest import Cohort

__all__ = ["case_folds", "strata", "validation_split"]


def strata(cohort: Cohort) -> np.ndarray:
    """What splits keep balanced: the class, or for survival the event indicator."""
    if cohort.task == "classification":
        return np.array([c.label for c in cohort.cases])
    return np.array([c.event for c in cohort.cases])


def case_folds(cohort: Cohort, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` (train, test) index pairs over the cases; each case is tested in exactly one fold."""
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    y = strata(cohort)
    values, counts = np.unique(y, return_counts=True)
    if cohort.task == "classification" and len(values) < 2:
        raise ValueError(
            f"{cohort.source}: all {len(y)} cases have the class {cohort.classes[values[0]]!r}; a classifier needs "
            "cases of at least 2 classes"
        )
    if cohort.task == "survival" and not y.any():
        raise ValueError(
            f"{cohort.source}: all {len(y)} cases are censored (event 0); a survival model needs observed events "
            "(event 1)"
        )
    fewest = int(counts.min())
    if fewest < folds:
        value = values[counts.argmin()]
        what = f"class {cohort.classes[value]!r}" if cohort.task == "classification" else f"event value {value}"
        fix = f"use --folds {fewest} or add cases" if fewest >= 2 else "add cases of it"
        raise ValueError(
            f"{cohort.source}: {what} has {fewest} case(s), fewer than the {folds} folds (every test fold needs "
            f"one); {fix}"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


def validation_split(
    cohort: Cohort, train: np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split training case indices into (fit, validation); stratified when every stratum allows it."""
    from sklearn.model_selection import train_test_split

    train = np.asarray(train)
    if fraction <= 0:
        return train, train[:0]
    y = strata(cohort)[train]
    n_val = max(1, int(round(fraction * len(train))))
    if n_val >= len(train):
        raise ValueError(
            f"val_fraction {fraction} holds out {n_val} of a fold's {len(train)} training cases, leaving none to fit "
            "on; use a smaller --val_fraction (default 0.2) or 0 to train without early stopping"
        )
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 and min(n_val, len(train) - n_val) >= len(counts) else None
    fit, val = train_test_split(train, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(fit), np.sort(val)
