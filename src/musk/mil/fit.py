"""Fitting one slide-level model on some cases, with early stopping on others, and predicting with it."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, WeightedRandomSampler
from tqdm.auto import tqdm

from ..training.precision import TrainingPrecision
from ..training.selection import ModelSelection
from .data import BagDataset, collate_bags
from .losses import cox_partial_nll, discrete_time_nll, hazards_to_risk
from .metrics import validation_metric
from .models import MILModel

__all__ = [
    "BALANCING",
    "OPTIMIZERS",
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
_SELECTED_BY = {"loss": "val_loss", "metric": "val_metric"}
#: ``adamw``: AdamW; ``sgd``: plain gradient steps with momentum 0.9 (steps in proportion to the gradient).
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class FitOptions:
    """How one model is trained. ``batch_size`` cases make one optimiser step (the Cox loss compares them).

    ``balance`` (classification): ``weights`` = loss weights inverse to class frequency, ``sampler`` = draw
    cases with those weights, ``none``. ``select`` (:data:`SELECTIONS`): which epoch's weights are kept;
    ``patience``: epochs without a better validation score before stopping (0 = never).
    ``uncensored_weight``: the discrete-time loss's weight on events (see :func:`discrete_time_nll`).
    ``optimizer`` (:data:`OPTIMIZERS`): AdamW, or SGD with momentum (the survival default of
    :class:`~musk.mil.train.MILTrainConfig`).
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
    optimizer: str = "adamw"
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
    """Head outputs (batch, out_dim) as fp32; the inputs go to the model's device and dtype."""
    param = next(model.parameters())
    outputs = []
    for item in batch:
        features = item["features"]
        features = None if features is None else features.to(param.device, param.dtype, non_blocking=True)
        text = None if item["text"] is None else item["text"].to(param.device, param.dtype)
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


def _balancing(
    dataset: BagDataset, fit_indices: np.ndarray, options: FitOptions, device: torch.device
) -> tuple[torch.Tensor | None, WeightedRandomSampler | None]:
    """Class balancing (classification): loss weights, or a sampler that draws cases class-balanced."""
    if dataset.cohort.task != "classification" or options.balance == "none":
        return None, None
    weights = _class_weights(dataset, fit_indices, len(dataset.cohort.classes))
    if options.balance == "weights":
        return torch.tensor(weights, dtype=torch.float32, device=device), None
    labels = [dataset.cohort.cases[i].label for i in fit_indices]
    generator = torch.Generator().manual_seed(options.seed)
    return None, WeightedRandomSampler(weights[labels], len(fit_indices), replacement=True, generator=generator)


def _fit_loader(
    dataset: BagDataset, fit_indices: np.ndarray, options: FitOptions, sampler: WeightedRandomSampler | None
) -> DataLoader:
    return DataLoader(
        Subset(dataset, fit_indices.tolist()),
        batch_size=options.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=dataset.cohort.task == "survival" and len(fit_indices) > options.batch_size,
        collate_fn=collate_bags,
        num_workers=options.num_workers,
        persistent_workers=options.num_workers > 0,
        generator=torch.Generator().manual_seed(options.seed),
    )


def _train_epoch(
    model: MILModel,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    precision: TrainingPrecision,
    loss_of: Callable[[torch.Tensor, list[dict]], torch.Tensor],
    options: FitOptions,
    epoch: int,
) -> dict:
    """One pass over ``loader``: the epoch's mean training loss and its seconds waiting for data and computing."""
    model.train()
    total, seen, waited, computed = 0.0, 0, 0.0, 0.0
    start = time.perf_counter()
    for batch in tqdm(loader, desc=f"epoch {epoch}", disable=not options.progress, leave=False):
        ready = time.perf_counter()
        waited += ready - start
        with precision.autocast():
            outputs = _forward(model, batch)
        loss = loss_of(outputs, batch)
        optimizer.zero_grad(set_to_none=True)
        precision.backward(loss)
        precision.step(optimizer, model.parameters(), options.max_grad_norm)
        total += loss.item() * len(batch)
        seen += len(batch)
        start = time.perf_counter()
        computed += start - ready
    return {"epoch": epoch, "train_loss": total / max(seen, 1), "data_s": waited, "compute_s": computed}


def fit_model(
    model: MILModel,
    dataset: BagDataset,
    fit_indices: Sequence[int],
    val_indices: Sequence[int],
    options: FitOptions,
    bin_edges: np.ndarray | None = None,
) -> FitResult:
    """Train ``model`` (already on its device) on ``fit_indices``; keep the weights of the epoch ``options.select``
    picks on ``val_indices`` (the last epoch when there are none). Precision: autocast, with a gradient scaler
    for fp16 (:class:`musk.training.precision.TrainingPrecision`). Each history entry has the epoch's losses,
    validation metric and its seconds spent waiting for data and computing."""
    task = dataset.cohort.task
    fit_indices, val_indices = np.asarray(fit_indices), np.asarray(val_indices)
    if task == "survival" and options.survival_loss == "cox" and options.batch_size < 2:
        raise ValueError("the Cox loss compares cases within a batch: use batch_size >= 2")
    device = _device(model)
    edges = None if bin_edges is None else torch.as_tensor(bin_edges)
    class_weights, sampler = _balancing(dataset, fit_indices, options, device)
    loader = _fit_loader(dataset, fit_indices, options, sampler)
    if options.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), options.lr, momentum=0.9, weight_decay=options.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    precision = TrainingPrecision(options.precision, device)
    selection = ModelSelection("min" if options.select == "loss" else "max", options.patience, min_delta=1e-6)

    def loss_of(outputs: torch.Tensor, batch: list[dict]) -> torch.Tensor:
        return _loss(outputs, batch, task, options, class_weights, edges)

    best_state, best, history = None, {}, []
    for epoch in range(1, options.epochs + 1):
        entry = _train_epoch(model, loader, optimizer, precision, loss_of, options, epoch)
        if len(val_indices):
            entry.update(_validate(model, dataset, val_indices, options, edges))
            if options.select != "last" and selection.update(epoch, entry[_SELECTED_BY[options.select]]):
                best_state, best = copy.deepcopy(model.state_dict()), entry
        history.append(entry)
        logger.debug("epoch %d: %s", epoch, entry)
        if len(val_indices) and selection.should_stop:
            logger.info(
                "early stop after epoch %d (best validation %s %.4f at epoch %d)",
                epoch,
                options.select,
                selection.best,
                selection.best_epoch,
            )
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if best_state is None:
        best = history[-1]
    return FitResult(model, best["epoch"], best.get("val_loss"), best.get("val_metric"), history)


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
