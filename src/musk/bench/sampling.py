"""Choosing the few-shot training set: ``k`` examples per class, drawn by seed."""

from __future__ import annotations

import numpy as np
import torch

from .data import BenchData


def check_training_classes(train: BenchData, test: BenchData) -> None:
    """What a probe trained on ``train`` and scored on ``test`` needs: one class list for both splits (the
    same label, the same class) and at least one training example of every class."""
    if train.classes != test.classes:
        raise ValueError(
            f"{test.name}: the train split has the classes {train.classes}, the test split {test.classes}; "
            f"both splits need the same class list"
        )
    absent = [c for i, c in enumerate(train.classes) if not np.any(train.labels == i)]
    if absent:
        raise ValueError(
            f"{train.name}: the train split has no images of the class(es) {absent}; a linear probe or kNN needs "
            f"training examples of every class (add them, or remove the class from the dataset)"
        )


def fewshot_indices(labels: np.ndarray, k: int, seed: int, classes: list[str] | None = None) -> np.ndarray:
    """Indices of ``k`` examples per class (all examples when ``k`` is -1), in draw order.

    The draw is the upstream one: a ``torch.randperm`` from a generator seeded with ``seed``, keeping the first
    ``k`` indices of each class, so a seed selects the same examples as there. A class with fewer than ``k``
    examples is an error naming it.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if k < 0:
        return np.arange(len(labels))
    if k == 0:
        raise ValueError("fewshot_k must be positive, or -1 for the whole training set")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator).numpy()
    counts: dict[int, int] = {}
    chosen = []
    for i in order:
        label = int(labels[i])
        if counts.get(label, 0) < k:
            counts[label] = counts.get(label, 0) + 1
            chosen.append(i)
    short = {c: n for c, n in counts.items() if n < k}
    if short:
        names = {c: (classes[c] if classes else str(c)) for c in short}
        detail = ", ".join(f"{names[c]!r} has {n}" for c, n in sorted(short.items()))
        raise ValueError(f"fewshot_k={k} needs {k} training examples per class, but {detail}; lower --fewshot_k")
    return np.asarray(chosen, dtype=np.int64)


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified ``(fit, validation)`` split of positions: about ``fraction`` of each class (at least one)
    is held out; every class needs two examples."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) < 2:
            raise ValueError(f"class {label} has a single training example; validation needs two per class")
        n_val = max(1, int(round(fraction * len(members))))
        val.extend(members[:n_val])
        fit.extend(members[n_val:])
    return np.sort(np.asarray(fit)), np.sort(np.asarray(val))
