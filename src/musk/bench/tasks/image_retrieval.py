"""Image-to-image retrieval: each image queries all others (itself excluded) by cosine similarity of the
image embeddings; a hit is a neighbour of the same class.

Metrics as upstream: ``acc_top1``, ``acc_top3``, ``acc_top5`` (a same-class image among the k nearest) and
``mMv_top5`` (the majority class of the 5 nearest is the query's class; a tie goes to the lowest class).
"""

from __future__ import annotations

import numpy as np

from ..data import BenchData
from ..features import FeatureStore
from ..metrics import majority_vote, stable_descending
from ..models import ModelAdapter


def retrieval_accuracy(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Top-1/3/5 accuracy and the top-5 majority vote of unit ``embeddings`` (N, D) with ``labels`` (N,)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) < 2:
        raise ValueError("image retrieval needs at least two images")
    scores = embeddings @ embeddings.T
    np.fill_diagonal(scores, -np.inf)
    neighbours = stable_descending(scores)[:, : len(labels) - 1]  # self (last) dropped
    hits = labels[neighbours] == labels[:, None]
    metrics = {f"acc_top{k}": float(hits[:, :k].any(axis=1).mean()) for k in (1, 3, 5)}
    votes = majority_vote(labels[neighbours[:, :5]], num_classes)
    metrics["mMv_top5"] = float(np.mean(votes == labels))
    return metrics


def evaluate(adapter: ModelAdapter, data: BenchData, store: FeatureStore) -> dict:
    if data.labels is None:
        raise ValueError(f"{data.name} has no class labels; image retrieval needs a labelled dataset")
    images = store.image_features(adapter, data, "embedding")
    return retrieval_accuracy(images, data.labels, len(data.classes or []) or int(data.labels.max()) + 1)
