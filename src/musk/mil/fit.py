"""Fitting one slide-level model on some cases, with early stopping on others, and predicting with it."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, WeightedRandomSampler
from tqdm.auto import tqdm

from .data import BagDataset, collate_bags
from .losses import cox_partial_nll, discrete_time_nll, hazards_to_risk
from .metrics import validation_metric
from .models import MILModel

__all__ = [
    "BALANCING",
    "SELECTIONS",
    "FitOptions",
    "FitResult",
    "fit_model",
    "outputs_to_predictions",
    "predict_outputs",
]

logger = logging.getLogger(__name__)

BALANCING = ("weights", "sampler", "none")
#: How the epoch whose weights are kept is chosen: lowest validation loss, best validation metric (c-index or
#: AUROC), or the last epoch.
SELECTIONS = ("loss", "metric", "last")


@dataclass
class FitOptions:
    """How one model is trained. ``batch_size`` cases make one optimiser step (the Cox loss compares them).

    ``balance`` (classification): ``weights`` = loss weights inverse to class frequency, ``sampler`` = draw
    cases with those weights, ``none``. ``select`` (:data:`SELECTIONS`): which epoch's weights are kept;
    ``patience``: epochs without a better validation score before stopping (0 = never).
    ``uncensored_weight``: the discrete-time loss's weight on events (see :func:`discrete_time_nll`).
    """

    epochs: int = 40
    patience: int = 10
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    balance: str = "weights"
    survival_loss: str = "nll"
    uncensored_weight: float = 0.0
    select: str = "loss"
    max_grad_norm: float | None = 5.0
    num_workers: int = 0
    precision: str = "fp32"
    seed: int = 0
    progress: bool = False


@dataclass
class FitResult:
    model: MILModel
    best_epoch: int
    best_val_loss: float | None
    best_val_metric: float | None = None
    history: list[dict] = field(default_factory=list)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _forward(model: MILModel, batch: list[dict]) -> torch.Tensor:
    device = _device(model)
    outputs = []
    for item in batch:
        features = None if item["features"] is None else item["features"].to(device, non_blocking=True)
        text = None if item["text"] is None else item["text"].to(device)
        outputs.append(model(features, text)[0])
    return torch.stack(outputs).float()


def _loss(
    outputs: torch.Tensor, batch: list[dict], task: str, options: FitOptions, class_weights, bin_edges
) -> torch.Tensor:
    device = outputs.device
    if task == "classification":
        labels = torch.tensor([b["label"] for b in batch], device=device)
        return F.cross_entropy(outputs, labels, weight=class_weights)
    times = torch.tensor([b["time"] for b in batch], dtype=torch.float64, device=device)
    events = torch.tensor([b["event"] for b in batch], device=device)
    if options.survival_loss == "cox":
        return cox_partial_nll(outputs[:, 0], times, events)
    bins = torch.bucketize(times, bin_edges.to(device, torch.float64), right=True)
    return discrete_time_nll(outputs, bins, events, options.uncensored_weight)


def _class_weights(dataset: BagDataset, indices: np.ndarray, n_classes: int) -> np.ndarray:
    labels = np.array([dataset.cohort.cases[i].label for i in indices])
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return weights


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def fit_model(
    model: MILModel,
    dataset: BagDataset,
    fit_indices: Sequence[int],
    val_indices: Sequence[int],
    options: FitOptions,
    bin_edges: np.ndarray | None = None,
) -> FitResult:
    """Train ``model`` (already on its device) on ``fit_indices``; keep the weights of the epoch with the lowest
    loss on ``val_indices`` (the last epoch when there are none). Each history entry has the epoch's losses
    and its seconds spent waiting for data and computing."""
    task = dataset.cohort.task
    fit_indices, val_indices = np.asarray(fit_indices), np.asarray(val_indices)
    if task == "survival" and options.survival_loss == "cox" and options.batch_size < 2:
        raise ValueError("the Cox loss compares cases within a batch: use batch_size >= 2")
    device = _device(model)
    edges = None if bin_edges is None else torch.as_tensor(bin_edges)
    class_weights, sampler = None, None
    if task == "classification" and options.balance != "none":
        weights = _class_weights(dataset, fit_indices, len(dataset.cohort.classes))
        if options.balance == "weights":
            class_weights = torch.tensor(weights, dtype=torch.float32, device=device)
        else:
            labels = [dataset.cohort.cases[i].label for i in fit_indices]
            generator = torch.Generator().manual_seed(options.seed)
            sampler = WeightedRandomSampler(weights[labels], len(fit_indices), replacement=True, generator=generator)
    loader = DataLoader(
        Subset(dataset, fit_indices.tolist()),
        batch_size=options.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=task == "survival" and len(fit_indices) > options.batch_size,
        collate_fn=collate_bags,
        num_workers=options.num_workers,
        persistent_workers=options.num_workers > 0,
        generator=torch.Generator().manual_seed(options.seed),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    best_state, best, best_epoch, stale = None, {"score": -math.inf}, 0, 0  # best: the selected epoch's entry
    history = []
    for epoch in range(1, options.epochs + 1):
        model.train()
        total, seen, waited, computed = 0.0, 0, 0.0, 0.0
        start = time.perf_counter()
        for batch in tqdm(loader, desc=f"epoch {epoch}", disable=not options.progress, leave=False):
            ready = time.perf_counter()
            waited += ready - start
            with _autocast(options.precision, device):
                outputs = _forward(model, batch)
            loss = _loss(outputs, batch, task, options, class_weights, edges)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if options.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), options.max_grad_norm)
            optimizer.step()
            total += loss.item() * len(batch)
            seen += len(batch)
            start = time.perf_counter()
            computed += start - ready
        entry = {"epoch": epoch, "train_loss": total / max(seen, 1), "data_s": waited, "compute_s": computed}
        if len(val_indices):
            entry.update(_validate(model, dataset, val_indices, options, edges))
            score = _score(entry, options.select)
            if options.select == "last" or score > best["score"] + 1e-6:
                best = {**entry, "score": score}
                best_state, best_epoch, stale = copy.deepcopy(model.state_dict()), epoch, 0
            else:
                stale += 1
        history.append(entry)
        logger.debug("epoch %d: %s", epoch, entry)
        if len(val_indices) and options.patience and stale >= options.patience:
            logger.info("early stop after epoch %d (best validation %s at epoch %d)", epoch, options.select, best_epoch)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = history[-1]["epoch"]
    model.eval()
    return FitResult(model, best_epoch, best.get("val_loss"), best.get("val_metric"), history)


def _validate(model: MILModel, dataset: BagDataset, indices: np.ndarray, options: FitOptions, edges) -> dict:
    """The validation loss and metric (c-index or AUROC) of ``model`` on the cases at ``indices``."""
    task = dataset.cohort.task
    outputs = predict_outputs(model, dataset, indices, options.batch_size, options.num_workers)
    cases = dataset.cohort.subset(indices).cases
    batch = [{"label": c.label, "time": c.time, "event": c.event} for c in cases]
    loss = _loss(torch.as_tensor(outputs), batch, task, options, None, edges).item()
    targets = [c.label for c in cases] if task == "classification" else [(c.time, c.event) for c in cases]
    metric = validation_metric(task, targets, outputs_to_predictions(outputs, task, options.survival_loss))
    return {"val_loss": loss, "val_metric": metric}


def _score(entry: dict, select: str) -> float:
    """What selects epochs (higher is better): the metric, or minus the loss (also where the metric is NaN)."""
    return entry["val_metric"] if select == "metric" and not math.isnan(entry["val_metric"]) else -entry["val_loss"]


@torch.no_grad()  # not inference_mode: bags cached here are trained on later
def predict_outputs(
    model: MILModel,
    dataset: BagDataset,
    indices: Sequence[int] | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
) -> np.ndarray:
    """Raw head outputs (n, out_dim) for the cases at ``indices`` (default: all)."""
    was_training = model.training
    model.eval()
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    loader = DataLoader(
        Subset(dataset, indices), batch_size=batch_size, collate_fn=collate_bags, num_workers=num_workers
    )
    outputs = [_forward(model, batch).cpu().numpy() for batch in loader]
    model.train(was_training)
    return np.concatenate(outputs) if outputs else np.zeros((0, model.out_dim), np.float32)


def outputs_to_predictions(outputs: np.ndarray, task: str, survival_loss: str = "nll") -> np.ndarray:
    """Class probabilities (n, C), or one risk per case (n,) for survival (higher = earlier event)."""
    outputs = torch.as_tensor(np.asarray(outputs, dtype=np.float32))
    if task == "classification":
        return torch.softmax(outputs, dim=1).numpy()
    if survival_loss == "cox":
        return outputs[:, 0].numpy()
    return hazards_to_risk(outputs).numpy()
