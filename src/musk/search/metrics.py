"""Retrieval metrics: Acc@k and mMV@k (the image-retrieval metrics of the MUSK paper), recall@k of an
approximate search against exact search. Definitions in docs/search.md."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["acc_at_k", "majority_vote", "mmv_at_k", "recall_at_k"]


def majority_vote(labels: Sequence) -> object:
    """The most frequent of ``labels`` (nearest first); a tie goes to the tied label that comes first."""
    counts: dict = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    if not counts:
        return None
    best = max(counts.values())
    return next(label for label in labels if counts[label] == best)


def acc_at_k(query_labels: Sequence, retrieved: Sequence[Sequence], k: int) -> float:
    """The fraction of queries with at least one of their ``k`` nearest retrieved items of their own label."""
    hits = [label in list(found)[:k] for label, found in zip(query_labels, retrieved, strict=True)]
    return float(np.mean(hits)) if hits else float("nan")


def mmv_at_k(query_labels: Sequence, retrieved: Sequence[Sequence], k: int) -> float:
    """The fraction of queries whose ``k`` nearest retrieved items vote (majority, ties to the nearest) for the
    query's own label."""
    hits = [majority_vote(list(found)[:k]) == label for label, found in zip(query_labels, retrieved, strict=True)]
    return float(np.mean(hits)) if hits else float("nan")


def recall_at_k(approximate: Sequence[Sequence], exact: Sequence[Sequence], k: int) -> float:
    """The mean fraction of each query's ``k`` exact nearest items that the approximate search also returns in its
    first ``k``."""
    fractions = []
    for found, truth in zip(approximate, exact, strict=True):
        truth = list(truth)[:k]
        if truth:
            fractions.append(len(set(list(found)[:k]) & set(truth)) / len(truth))
    return float(np.mean(fractions)) if fractions else float("nan")
