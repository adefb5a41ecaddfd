"""The training loop every stage shares, on accelerate: one CPU process, one GPU, or many processes
(DDP, FSDP, DeepSpeed through ``accelerate launch``), with mixed precision, gradient accumulation,
activation checkpointing, checkpoints every ``save_every`` steps and exact resume."""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml
from torch import nn

from ..files import write_json
from ..provenance import provenance
from ..runtime import accelerate_mixed_precision
from ..training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ..training.optim import build_optimizer
from ..training.schedule import set_lr, warmup_cosine, warmup_steps
from .batching import DataPosition, MicroBatches, make_loader
from .config import RunConfig, config_dict
from .distributed import adapt_to_sharding, evaluation_musk, make_accelerator
from .logs import RunLog
from .objectives import StepContext, gather_with_grad

__all__ = ["StageSetup", "TrainResult", "train_stage"]

logger = logging.getLogger(__name__)


@dataclass
class StageSetup:
    """What a stage hands the loop.

    ``batches(positions, rank, world)`` gives this process's micro-batches of each data source (by name) from the
    sources' positions; a training micro-batch merges one micro-batch of every source. ``prepare`` adds on-device
    inputs (visual tokenizer codes). ``model(batch, step)`` returns the micro-batch's share of the step's loss and
    metrics (:class:`~musk.pretrain.objectives.StepContext`); ``model.target_counts(batch)`` its predicted tokens
    per objective. ``evaluate(musk)`` (optional) scores the MUSK model at every checkpoint, on the main process; the
    scores go to ``eval.csv`` and ``trainer_state.json``, and the checkpoint with the best ``select_by`` score is
    kept. ``cache_features``: ``model(batch, features_only=True)`` gives contrastive features, which an accumulated
    step caches so that its negatives are the whole step's. ``weights``: the fingerprint of the weights the model
    started from (``provenance.json`` records it).
    """

    model: nn.Module
    batches: Callable[[dict[str, DataPosition], int, int], dict[str, MicroBatches]]
    samples_per_step: int
    samples_per_epoch: int | None = None
    prepare: Callable[[dict], dict] | None = None
    extra_provenance: dict = field(default_factory=dict)
    evaluate: Callable[[nn.Module], dict] | None = None
    select_by: str | None = None
    cache_features: bool = False
    weights: dict | None = None


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    checkpoint: Path
    last_metrics: dict


@dataclass
class _Progress:
    """Where a run stands: optimizer steps done, each source's data position, the best checkpoint by model
    selection, the newest checkpoint, the last step's metrics."""

    step: int = 0
    positions: dict[str, DataPosition] = field(default_factory=dict)
    best: dict | None = None
    checkpoint: Path | None = None
    metrics: dict = field(default_factory=dict)


def _total_steps(config: RunConfig, setup: StageSetup) -> int:
    if config.steps is not None:
        return config.steps
    if not setup.samples_per_epoch:
        raise ValueError("this data is a stream of unknown length: set steps instead of epochs")
    return max(1, math.floor(config.epochs * (setup.samples_per_epoch // setup.samples_per_step)))


def _evaluate(accelerator, model, evaluate, output_dir: Path, step: int) -> dict | None:
    """On the main process, with the whole model (gathered there under FSDP); called on every process."""
    scores = None
    musk = evaluation_musk(accelerator, model)
    if musk is not None:
        scores = evaluate(musk)
        logger.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        _append_csv(output_dir / "eval.csv", {"step": step, **scores})
    accelerator.wait_for_everyone()
    return scores


def _select(best: dict | None, scores: dict | None, metric: str | None, step: int) -> dict | None:
    """The best checkpoint so far by ``metric`` (higher is better; the earlier one on ties). ``scores`` are
    None on the processes that did not evaluate, which keep no record (only the main process writes it)."""
    if scores is None or metric is None or (best is not None and scores[metric] <= best["score"]):
        return best
    logger.info("step %d is the best so far by %s (%.4f)", step, metric, scores[metric])
    return {"step": step, "metric": metric, "score": scores[metric]}


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _next_micro_batch(loaders: dict, positions: dict[str, DataPosition]) -> dict:
    """One micro-batch of every source, merged; advances the sources' positions."""
    batch: dict = {}
    for name, loader in loaders.items():
        part = next(loader)
        epoch, index, _ = part.pop("position").tolist()
        positions[name] = DataPosition(epoch, index + 1)
        batch.update(part)
    return batch


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _step_context(accelerator, model, setup: StageSetup, batches: list[dict]) -> tuple[StepContext, list]:
    """Of the step's micro-batches (on the device): their target counts summed over all processes and, for
    a contrastive stage under accumulation, the step's features (a forward without gradients per
    micro-batch, gathered from every process) with the RNG state each one started from, so that its
    training forward draws the same drop path and its features equal the cached ones."""
    counts: dict[str, int] = {}
    for batch in batches:
        for name, n in accelerator.unwrap_model(model).target_counts(batch).items():
            counts[name] = counts.get(name, 0) + n
    names = sorted(counts)
    if names:
        totals = accelerator.reduce(torch.tensor([float(counts[n]) for n in names], device=accelerator.device), "sum")
        counts = dict(zip(names, totals.tolist(), strict=True))
    context = StepContext(micro_batches=len(batches), targets=counts)
    if not setup.cache_features or len(batches) == 1:
        return context, []
    states, image, text = [], [], []
    with torch.no_grad():
        for batch in batches:
            states.append(_rng_state(accelerator.device))
            features = model(batch, features_only=True)
            image.append(gather_with_grad(features[0]))
            text.append(gather_with_grad(features[1]))
    return replace(context, features=(torch.cat(image), torch.cat(text))), states


def train_stage(config: RunConfig, build: Callable[[object], StageSetup], stage: str) -> TrainResult:
    """Run (or resume) one pretraining stage: ``build(accelerator)`` gives its model and data."""
    accelerator = _accelerator(config)
    output_dir = Path(config.output_dir)
    setup = build(accelerator)
    model, optimizer = _prepare(accelerator, config, setup)
    progress = _resume(accelerator, config, output_dir)
    total = _total_steps(config, setup)
    warmup = warmup_steps(config.warmup, total)
    loaders = _loaders(setup, progress, config, accelerator)
    if accelerator.is_main_process:
        _write_run_record(accelerator, config, setup, stage, output_dir)
    logger.info(
        "%s: steps %d..%d of %d (%d warm-up), %d samples per step, %d process(es), precision %s",
        stage, progress.step + 1, total, total, warmup, setup.samples_per_step, accelerator.num_processes,
        accelerator.mixed_precision,
    )  # fmt: skip
    log = RunLog(output_dir, progress.step, total, enabled=accelerator.is_main_process, progress=config.progress,
                 tensorboard=config.tensorboard)  # fmt: skip
    model.train()
    for step in range(progress.step, total):
        lr = set_lr(optimizer, warmup_cosine(step, warmup, total, config.min_lr / config.lr))
        tic = time.perf_counter()
        batches = [_to_device(_next_micro_batch(loaders, progress.positions), accelerator.device)
                   for _ in range(config.grad_accum)]  # fmt: skip
        data_s, tic = time.perf_counter() - tic, time.perf_counter()
        sums = _optimizer_step(accelerator, model, optimizer, setup, batches, config.max_grad_norm)
        progress.step, progress.metrics = step + 1, {**sums, "lr": lr}
        samples = setup.samples_per_step // accelerator.num_processes
        log.step(progress.step, progress.metrics, data_s, time.perf_counter() - tic, samples,
                 progress.step % config.log_every == 0)  # fmt: skip
        if progress.step % config.save_every == 0 or progress.step == total:
            _checkpoint(accelerator, model, setup, progress, config, output_dir)
    log.close()
    accelerator.end_training()
    return TrainResult(output_dir, total, progress.checkpoint, progress.metrics)


def _accelerator(config: RunConfig):
    """The run's accelerator, seeded; processes other than the main one only warn."""
    from accelerate.utils import set_seed

    accelerator = make_accelerator(config.cpu, accelerate_mixed_precision(config.precision, config.cpu))
    set_seed(config.seed)
    if accelerator.distributed_type == "DEEPSPEED" and config.grad_accum > 1:
        raise ValueError("DeepSpeed steps the optimizer inside backward: set grad_accum 1 (raise batch_size instead)")
    if not accelerator.is_main_process:
        logging.getLogger("musk").setLevel(logging.WARNING)
    return accelerator


def _prepare(accelerator, config: RunConfig, setup: StageSetup) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The stage's model and its AdamW (layer-wise lr decay), prepared for the processes."""
    model = setup.model
    adapt_to_sharding(accelerator, model, setup.samples_per_step)
    if config.grad_checkpointing and hasattr(model, "musk"):
        model.musk.set_grad_checkpointing(True)
    optimizer = build_optimizer(model, config.lr, config.weight_decay, config.layer_decay, (config.beta1, config.beta2))
    return accelerator.prepare(model, optimizer)


def _resume(accelerator, config: RunConfig, output_dir: Path) -> _Progress:
    """The progress restored from the checkpoint ``config.resume`` names (``auto``: the newest in
    ``output_dir``, if any), with the model, optimizer and random states; a fresh start otherwise."""
    checkpoint = latest_checkpoint(output_dir / "checkpoints") if config.resume == "auto" else None
    if config.resume not in ("auto", "never"):
        checkpoint = Path(config.resume)
    if checkpoint is None:
        return _Progress()
    state = load_checkpoint(accelerator, checkpoint)
    positions = {name: DataPosition(**position) for name, position in state["positions"].items()}
    return _Progress(state["step"], positions, state.get("best"), checkpoint, state.get("metrics", {}))


def _loaders(setup: StageSetup, progress: _Progress, config: RunConfig, accelerator) -> dict[str, object]:
    """An iterator over this process's micro-batches of each source, from its position (which it records)."""
    sources = setup.batches(progress.positions, accelerator.process_index, accelerator.num_processes)
    progress.positions = {name: DataPosition(s.start.epoch, s.start.batch) for name, s in sources.items()}
    return {name: iter(make_loader(s, config.num_workers)) for name, s in sources.items()}


def _write_run_record(accelerator, config: RunConfig, setup: StageSetup, stage: str, output_dir: Path) -> None:
    """``config.yaml`` (the resolved settings) and ``provenance.json`` (with versions and the launch)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(yaml.safe_dump(config_dict(config), sort_keys=False))
    record = provenance({"stage": stage, **config_dict(config)}, setup.weights)
    record.update(processes=accelerator.num_processes, distributed_type=accelerator.distributed_type.value,
                  mixed_precision=accelerator.mixed_precision, **setup.extra_provenance)  # fmt: skip
    write_json(output_dir / "provenance.json", record)


def _optimizer_step(accelerator, model, optimizer, setup: StageSetup, batches: list[dict], max_grad_norm) -> dict:
    """Forward and backward every micro-batch of the step, clip, step; the step's metrics (summed shares)."""
    context, rng_states = _step_context(accelerator, model, setup, batches)
    sums: dict[str, float] = {}
    for m, batch in enumerate(batches):
        if setup.prepare is not None:
            batch = setup.prepare(batch)
        if rng_states:
            _set_rng_state(rng_states[m], accelerator.device)
        sync = nullcontext() if m == len(batches) - 1 else accelerator.no_sync(model)
        with sync:
            out = model(batch, replace(context, index=m))
            accelerator.backward(out["loss"])
        for key, value in out.items():
            if key != "loss":
                name = "loss" if key == "total_loss" else key  # the all-process value of the loss
                sums[name] = sums.get(name, 0.0) + value
    if max_grad_norm:
        norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        if norm is not None:  # DeepSpeed clips inside its own step (gradient_clipping in its config)
            sums["grad_norm"] = float(norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    return sums


def _checkpoint(
    accelerator, model, setup: StageSetup, progress: _Progress, config: RunConfig, output_dir: Path
) -> None:
    """Evaluate (when the stage does), choose the best checkpoint, and save one at ``progress.step``."""
    state = {"positions": {k: p.state_dict() for k, p in progress.positions.items()}, "metrics": progress.metrics}
    if setup.evaluate is not None:
        state["evaluation"] = _evaluate(accelerator, model, setup.evaluate, output_dir, progress.step)
        progress.best = state["best"] = _select(progress.best, state["evaluation"], setup.select_by, progress.step)
    progress.checkpoint = save_checkpoint(
        accelerator, output_dir / "checkpoints", progress.step, state, config.keep_checkpoints,
        protect=progress.best["step"] if progress.best else None,
    )  # fmt: skip
