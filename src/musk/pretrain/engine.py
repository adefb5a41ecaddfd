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
from .batching import BatchStream, StreamPosition, make_loader
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import RunConfig, config_dict
from .distributed import adapt_to_sharding, evaluation_musk, make_accelerator
from .logs import RunLog
from .objectives import StepContext, gather_with_grad
from .optim import lr_factor, param_groups, set_lr

__all__ = ["StageSetup", "TrainResult", "train_stage"]

logger = logging.getLogger(__name__)


@dataclass
class StageSetup:
    """What a stage hands the loop.

    ``streams(positions, rank, world)`` builds this process's batch streams (by name) from their positions;
    each micro-batch merges one micro-batch of every stream. ``prepare`` adds on-device inputs (visual
    tokenizer codes). ``model(batch, step)`` returns the micro-batch's share of the step's loss and metrics
    (:class:`~musk.pretrain.objectives.StepContext`); ``model.target_counts(batch)`` its predicted tokens per
    objective. ``evaluate(musk)`` (optional) scores the MUSK model at every checkpoint, on the main process;
    the scores go to ``eval.csv`` and ``trainer_state.json``, and the checkpoint with the best ``select_by``
    score is kept. ``cache_features``: ``model(batch, features_only=True)`` gives contrastive features, which
    an accumulated step caches so that its negatives are the whole step's.
    """

    model: nn.Module
    streams: Callable[[dict[str, StreamPosition], int, int], dict[str, BatchStream]]
    samples_per_step: int
    samples_per_epoch: int | None = None
    prepare: Callable[[dict], dict] | None = None
    extra_provenance: dict = field(default_factory=dict)
    evaluate: Callable[[nn.Module], dict] | None = None
    select_by: str | None = None
    cache_features: bool = False


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    checkpoint: Path
    last_metrics: dict


def _total_steps(config: RunConfig, setup: StageSetup) -> int:
    if config.steps is not None:
        return config.steps
    if not setup.samples_per_epoch:
        raise ValueError("this data is a stream of unknown length: set steps instead of epochs")
    return max(1, math.floor(config.epochs * (setup.samples_per_epoch // setup.samples_per_step)))


def _warmup_steps(config: RunConfig, total: int) -> int:
    return int(config.warmup * total) if config.warmup < 1 else int(config.warmup)


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


def _next_micro_batch(loaders: dict, positions: dict[str, StreamPosition]) -> dict:
    """One micro-batch of every stream, merged; advances the streams' positions."""
    batch: dict = {}
    for name, loader in loaders.items():
        part = next(loader)
        epoch, index, _ = part.pop("position").tolist()
        positions[name] = StreamPosition(epoch, index + 1)
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
    from accelerate.utils import set_seed

    accelerator = make_accelerator(config.cpu, accelerate_mixed_precision(config.precision, config.cpu))
    set_seed(config.seed)
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    if accelerator.distributed_type == "DEEPSPEED" and config.grad_accum > 1:
        raise ValueError("DeepSpeed steps the optimizer inside backward: set grad_accum 1 (raise batch_size instead)")
    if not main:
        logging.getLogger("musk").setLevel(logging.WARNING)
    output_dir = Path(config.output_dir)
    setup = build(accelerator)
    model = setup.model
    adapt_to_sharding(accelerator, model, setup.samples_per_step)
    if config.grad_checkpointing and hasattr(model, "musk"):
        model.musk.set_grad_checkpointing(True)
    optimizer = torch.optim.AdamW(
        param_groups(model, config.lr, config.weight_decay, config.layer_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
    )
    model, optimizer = accelerator.prepare(model, optimizer)

    start, positions, best = 0, {}, None
    checkpoint = latest_checkpoint(output_dir / "checkpoints") if config.resume == "auto" else None
    if config.resume not in ("auto", "never"):
        checkpoint = Path(config.resume)
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint)
        start, best = state["step"], state.get("best")
        positions = {k: StreamPosition(**v) for k, v in state["positions"].items()}
    total = _total_steps(config, setup)
    warmup = _warmup_steps(config, total)
    streams = setup.streams(positions, rank, world)
    positions = {name: StreamPosition(s.start.epoch, s.start.batch) for name, s in streams.items()}
    loaders = {name: iter(make_loader(s, config.num_workers)) for name, s in streams.items()}

    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(config_dict(config), sort_keys=False))
        record = provenance({"stage": stage, **config_dict(config)})
        record.update(processes=world, distributed_type=accelerator.distributed_type.value,
                      mixed_precision=accelerator.mixed_precision, **setup.extra_provenance)  # fmt: skip
        write_json(output_dir / "provenance.json", record)
    logger.info(
        "%s: steps %d..%d of %d (%d warm-up), %d samples per step, %d process(es), precision %s",
        stage, start + 1, total, total, warmup, setup.samples_per_step, world, accelerator.mixed_precision,
    )  # fmt: skip
    log = RunLog(output_dir, start, total, enabled=main, progress=config.progress, tensorboard=config.tensorboard)
    metrics: dict = {}
    model.train()
    final, device = checkpoint, accelerator.device
    for step in range(start, total):
        lr = set_lr(optimizer, lr_factor(step, warmup, total, config.min_lr / config.lr))
        tic = time.perf_counter()
        batches = [_to_device(_next_micro_batch(loaders, positions), device) for _ in range(config.grad_accum)]
        data_s, tic = time.perf_counter() - tic, time.perf_counter()
        context, rng_states = _step_context(accelerator, model, setup, batches)
        sums: dict[str, float] = {}
        for m, batch in enumerate(batches):
            if setup.prepare is not None:
                batch = setup.prepare(batch)
            if rng_states:
                _set_rng_state(rng_states[m], device)
            sync = nullcontext() if m == config.grad_accum - 1 else accelerator.no_sync(model)
            with sync:
                out = model(batch, replace(context, index=m))
                accelerator.backward(out["loss"])
            for key, value in out.items():
                name = "loss" if key == "total_loss" else key  # the all-process value of the loss
                if key != "loss":
                    sums[name] = sums.get(name, 0.0) + value
        if config.max_grad_norm:
            norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            if norm is not None:  # DeepSpeed clips inside its own step (gradient_clipping in its config)
                sums["grad_norm"] = float(norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        compute_s = time.perf_counter() - tic
        metrics = {**sums, "lr": lr}
        done = step + 1
        log.step(done, metrics, data_s, compute_s, setup.samples_per_step // world, done % config.log_every == 0)
        if done % config.save_every == 0 or done == total:
            state = {"positions": {k: p.state_dict() for k, p in positions.items()}, "metrics": metrics}
            if setup.evaluate is not None:
                state["evaluation"] = _evaluate(accelerator, model, setup.evaluate, output_dir, done)
                best = state["best"] = _select(best, state["evaluation"], setup.select_by, done)
            final = save_checkpoint(accelerator, output_dir / "checkpoints", done, state, config.keep_checkpoints,
                                    protect=best["step"] if best else None)  # fmt: skip
    log.close()
    accelerator.end_training()
    return TrainResult(output_dir, total, final, metrics)
