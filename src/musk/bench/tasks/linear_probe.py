"""Linear probe on frozen image features, few-shot or on the whole training set, on CPU or GPU.

The default recipe is the upstream one: a linear layer (Xavier-uniform weights, zero bias), AdamW with
learning rate 0.1 and no weight decay, 10 epochs, cosine decay per step without warm-up, cross-entropy,
batches of 256 shuffled by the seed. With several ``weight_decays`` the decay is chosen on a stratified
20 % validation hold-out of the training set (best balanced accuracy; the first on a tie), then the probe is
retrained on the whole training set.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data import BenchData
from ..features import FeatureStore
from ..metrics import auroc, classification_metrics
from ..models import ModelAdapter
from ..sampling import check_training_classes, fewshot_indices, holdout_split

logger = logging.getLogger(__name__)


def train_probe(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    seed: int = 0,
    lr: float = 0.1,
    epochs: int = 10,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> torch.nn.Linear:
    """A trained linear layer (on ``device``); deterministic for a seed on a given device."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    probe = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        bound = math.sqrt(6.0 / (x.shape[1] + num_classes))
        probe.weight.uniform_(-bound, bound, generator=generator)
        probe.bias.zero_()
    probe.to(device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * (1 + math.cos(math.pi * step / total)) * lr
            loss = F.cross_entropy(probe(x[batch].to(device)), y[batch].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    return probe.eval()


@torch.no_grad()
def predict_proba(probe: torch.nn.Linear, features: np.ndarray) -> np.ndarray:
    device = probe.weight.device
    return probe(torch.as_tensor(features, dtype=torch.float32, device=device)).softmax(-1).cpu().numpy()


def select_weight_decay(features, labels, num_classes, weight_decays, seed, **train) -> float:
    """The weight decay with the best balanced accuracy on a stratified 20 % hold-out."""
    from sklearn.metrics import balanced_accuracy_score

    fit, val = holdout_split(labels, 0.2, seed)
    scores = []
    for wd in weight_decays:
        probe = train_probe(features[fit], labels[fit], num_classes, seed, weight_decay=wd, **train)
        predictions = predict_proba(probe, features[val]).argmax(1)
        scores.append(balanced_accuracy_score(labels[val], predictions))
        logger.info("weight decay %g: validation balanced accuracy %.4f", wd, scores[-1])
    return float(weight_decays[int(np.argmax(scores))])


def evaluate(
    adapter: ModelAdapter,
    train: BenchData,
    test: BenchData,
    store: FeatureStore,
    fewshot_k: int = -1,
    seed: int = 0,
    lr: float = 0.1,
    epochs: int = 10,
    weight_decays: Sequence[float] = (0.0,),
    batch_size: int = 256,
    ms_aug: bool = False,
    device: str | torch.device = "cpu",
) -> dict:
    """Classification metrics plus ``auroc`` and the ``weight_decay`` used, on the test split."""
    check_training_classes(train, test)
    num_classes = len(test.classes)
    chosen = fewshot_indices(train.labels, fewshot_k, seed, train.classes)
    x_train = store.image_features(adapter, train, "probe", ms_aug)[chosen]
    y_train = train.labels[chosen]
    options = {"lr": lr, "epochs": epochs, "batch_size": batch_size, "device": device}
    wd = weight_decays[0]
    if len(weight_decays) > 1:
        wd = select_weight_decay(x_train, y_train, num_classes, list(weight_decays), seed, **options)
    probe = train_probe(x_train, y_train, num_classes, seed, weight_decay=wd, **options)
    probabilities = predict_proba(probe, store.image_features(adapter, test, "probe", ms_aug))
    metrics = classification_metrics(test.labels, probabilities, num_classes)
    metrics["auroc"] = auroc(test.labels, probabilities)
    metrics["weight_decay"] = wd
    metrics["n_train"] = len(chosen)
    return metrics
