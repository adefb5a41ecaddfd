"""k-nearest-neighbour probe (k = 20, cosine similarity, majority vote), as other pathology suites report."""

from __future__ import annotations

import numpy as np

from ..data import BenchData
from ..features import FeatureStore
from ..metrics import classification_metrics, majority_vote, stable_descending
from ..models import ModelAdapter
from ..sampling import check_training_classes, fewshot_indices


def check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(
            f"the kNN probe needs at least one neighbour: k (--knn_k) must be a positive integer, got {k!r}"
        )


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    """Majority label of the ``k`` most cosine-similar training examples (all of them when ``k`` is larger);
    of equally similar neighbours the earlier one counts, a tied vote goes to the lowest label."""
    check_k(k)

    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    scores = unit(test_x) @ unit(train_x).T
    neighbours = stable_descending(scores)[:, : min(k, len(train_y))]
    return majority_vote(np.asarray(train_y)[neighbours], num_classes)


def evaluate(
    adapter: ModelAdapter,
    train: BenchData,
    test: BenchData,
    store: FeatureStore,
    k: int = 20,
    fewshot_k: int = -1,
    seed: int = 0,
    ms_aug: bool = False,
) -> dict:
    check_k(k)
    check_training_classes(train, test)
    num_classes = len(test.classes)
    chosen = fewshot_indices(train.labels, fewshot_k, seed, train.classes)
    train_x = store.image_features(adapter, train, "probe", ms_aug)[chosen]
    predictions = knn_predict(
        train_x, train.labels[chosen], store.image_features(adapter, test, "probe", ms_aug), k, num_classes
    )
    one_hot = np.eye(num_classes)[predictions]
    metrics = classification_metrics(test.labels, one_hot, num_classes)
    metrics.pop("acc5", None)  # a vote has no ranking
    metrics["k"] = min(k, len(chosen))
    return metrics
