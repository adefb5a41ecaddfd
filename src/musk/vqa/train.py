"""Fine-tuning MUSK for VQA through accelerate: one process, several GPUs or several CPU processes alike.

Run in one process by calling :func:`train_vqa`, or under ``accelerate launch`` (``musk vqa train`` is the
same function), which spreads the batches over the processes and averages the gradients. A run started again
in its output folder resumes after its newest finished epoch (see :mod:`musk.vqa.runs`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..files import write_json
from ..models import DEFAULT_MODEL, create_model
from ..models.loading import resolve_weights
from ..pretrain.checkpoint import load_checkpoint, save_checkpoint
from ..provenance import provenance
from ..runtime import accelerate_mixed_precision
from ..tokenizer import get_tokenizer
from ..transforms import get_transform
from .answers import AnswerVocab
from .data import VQACollator, VQADataset, VQAExample, load_split
from .evaluate import compute_metrics
from .model import MuskVQA
from .optim import build_optimizer, cosine_with_warmup
from .runs import CHECKPOINTS, HISTORY_FILENAME, PreviousRun, clear_run, find_previous_run, run_key
from .saved import save_vqa_model

__all__ = ["LOSSES", "PRECISIONS", "VQATrainConfig", "VQATrainResult", "train_vqa"]

logger = logging.getLogger(__name__)

LOSSES = ("ce", "bce")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass
class VQATrainConfig:
    """Everything a VQA fine-tuning run depends on (saved with the model).

    ``weights``: the MUSK weights to start from (hub id, local file or folder), None for a random start.
    ``val_split``: None trains without validation (the last epoch is kept, no early stopping).
    ``precision``: ``auto`` = bf16 mixed precision on a GPU that has it, fp16 on other GPUs, fp32 on CPU.
    ``loss``: ``ce`` (softmax cross-entropy) or ``bce`` (BEiT-3's soft-score binary cross-entropy).
    ``patience``: stop after this many evaluations without a better validation accuracy (0: never stop early).
    ``overwrite``: replace a different (or finished) run in ``output_dir`` instead of refusing to start; the
    same run, unfinished, is always resumed.
    """

    data: str | None = None
    output_dir: str = "musk-vqa"
    model: str = DEFAULT_MODEL
    weights: str | None = "hf_hub:xiangjx/musk"
    tokenizer: str | None = None
    cache_dir: str | None = None
    train_split: str = "train"
    val_split: str | None = "validation"
    min_answer_count: int = 1
    max_question_length: int = 100
    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int | None = None
    grad_accum: int = 1
    lr: float = 3e-5
    layer_decay: float = 0.9
    weight_decay: float = 0.05
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    loss: str = "ce"
    label_smoothing: float = 0.0
    patience: int = 3
    precision: str = "auto"
    cpu: bool = False
    grad_checkpointing: bool = False
    num_workers: int = 0
    seed: int = 0
    progress: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "grad_accum", "min_answer_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class VQATrainResult:
    """Where the model went and how training went (one entry of ``history`` per epoch)."""

    output_dir: Path
    best_dir: Path
    best_epoch: int
    best_accuracy: float | None
    num_answers: int
    history: list[dict] = field(default_factory=list)


def _loss(logits: torch.Tensor, labels: torch.Tensor, config: VQATrainConfig) -> torch.Tensor:
    logits = logits.float()
    if config.loss == "ce":
        return F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    targets = F.one_hot(labels, logits.shape[-1]).float()
    # BEiT-3 scales the mean over (batch, answers) by the number of answers: a sum over answers per question.
    return F.binary_cross_entropy_with_logits(logits, targets) * logits.shape[-1]


def _known_answers(examples: Sequence[VQAExample], vocab: AnswerVocab) -> list[VQAExample]:
    kept = [e for e in examples if vocab.index(e.answer) >= 0]
    if len(kept) < len(examples):
        logger.info(
            "training on %d of %d questions: %d have answers seen fewer than %d times",
            len(kept),
            len(examples),
            len(examples) - len(kept),
            vocab.min_count,
        )
    return kept


@torch.no_grad()
def _validate(accelerator, model, loader, examples: Sequence[VQAExample], vocab: AnswerVocab) -> dict:
    model.eval()
    indices, predictions = [], []
    for batch in loader:
        logits = model(batch["images"], batch["ids"], batch["padding_mask"])
        pred, index = accelerator.gather_for_metrics((logits.argmax(-1), batch["index"]))
        predictions.append(pred.cpu())
        indices.append(index.cpu())
    model.train()
    order = torch.cat(indices).tolist()
    answers = [vocab.answer(int(i)) for i in torch.cat(predictions)]
    return compute_metrics([examples[i] for i in order], answers, known=set(vocab.answers))


def train_vqa(
    config: VQATrainConfig,
    train_examples: Sequence[VQAExample] | None = None,
    val_examples: Sequence[VQAExample] | None = None,
) -> VQATrainResult:
    """Fine-tune a MUSK model for VQA; writes ``best/`` (the best validation epoch), ``last/`` and
    ``history.json`` under ``config.output_dir``. Examples are read from ``config.data`` unless given."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(
        cpu=config.cpu,
        mixed_precision=accelerate_mixed_precision(config.precision, config.cpu),
        gradient_accumulation_steps=config.grad_accum,
    )
    set_seed(config.seed)
    main = accelerator.is_main_process
    if not main:  # one process reports; the others only warn
        logging.getLogger("musk").setLevel(logging.WARNING)
    if train_examples is None or (val_examples is None and config.val_split):
        if config.data is None:
            raise ValueError("no training data: set data (a folder or file) or pass the examples")
    if train_examples is None:
        train_examples = load_split(config.data, config.train_split)
    if val_examples is None and config.val_split:
        val_examples = load_split(config.data, config.val_split)
    if not train_examples:
        raise ValueError("the training split is empty")
    if val_examples is not None and not val_examples:
        raise ValueError("the validation split is empty")

    vocab = AnswerVocab.build((e.answer for e in train_examples), config.min_answer_count)
    train_examples = _known_answers(train_examples, vocab)
    logger.info("answer vocabulary: %d answers (min count %d)", len(vocab), config.min_answer_count)

    output_dir = Path(config.output_dir)
    best_dir, last_dir = output_dir / "best", output_dir / "last"
    key = run_key(config, train_examples, val_examples)
    previous = find_previous_run(output_dir, key, config.overwrite)
    if previous is not None and previous.checkpoint is None:
        done = previous.record
        logger.info("%s already holds this finished run (best epoch %d): nothing to do", output_dir, done["best_epoch"])
        return VQATrainResult(
            output_dir, best_dir, done["best_epoch"], done.get("best_accuracy"), len(vocab), done["history"]
        )
    if previous is None and config.overwrite and main:
        clear_run(output_dir)
    accelerator.wait_for_everyone()

    tokenizer = get_tokenizer(config.tokenizer, cache_dir=config.cache_dir)
    backbone = create_model(config.model, pretrained=config.weights or None, cache_dir=config.cache_dir)
    if config.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    model = MuskVQA(backbone, len(vocab)).train()
    transform = get_transform(backbone)
    collate = VQACollator(tokenizer, config.max_question_length)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(
        VQADataset(train_examples, transform, vocab),
        batch_size=config.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=config.num_workers,
        collate_fn=collate,
    )
    val_loader = None
    if val_examples is not None:
        val_loader = DataLoader(
            VQADataset(val_examples, transform, vocab),
            batch_size=config.eval_batch_size or config.batch_size,
            num_workers=config.num_workers,
            collate_fn=collate,
        )
    optimizer = build_optimizer(model, config.lr, config.weight_decay, config.layer_decay)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)

    steps_per_epoch = math.ceil(len(train_loader) / config.grad_accum)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = int(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
        lambda step: cosine_with_warmup(step, warmup_steps, total_steps, config.min_lr_ratio),
    )
    accelerator.register_for_checkpointing(scheduler)

    weights_path = None if not config.weights else resolve_weights(config.weights, config.cache_dir)
    record = provenance(asdict(config), weights_path)
    record["processes"] = accelerator.num_processes
    record["mixed_precision"] = accelerator.mixed_precision
    record["run_key"] = key

    def save(directory: Path, epoch: int, metrics: dict | None) -> None:
        if main:
            save_vqa_model(
                accelerator.unwrap_model(model),
                vocab,
                directory,
                tokenizer=tokenizer,
                max_question_length=config.max_question_length,
                architecture=config.model,
                provenance={**record, "epoch": epoch, "validation": metrics},
            )
        accelerator.wait_for_everyone()

    state = _resume(accelerator, previous, output_dir)
    history, best_accuracy, best_epoch, stale = (state[k] for k in ("history", "best_accuracy", "best_epoch", "stale"))
    if main:  # names the run in the folder before anything else is written
        _write_history(output_dir, key, state, finished=False)
    logger.info(
        "training on %d questions for epochs %d..%d: %d optimizer steps (%d warm-up), %d process(es), precision %s",
        len(train_examples),
        len(history) + 1,
        config.epochs,
        total_steps,
        warmup_steps,
        accelerator.num_processes,
        accelerator.mixed_precision,
    )
    stopped = bool(config.patience and stale >= config.patience)
    for epoch in range(len(history) + 1, config.epochs + 1):
        if stopped:
            break
        generator.manual_seed(config.seed + epoch - 1)  # each epoch's order depends on the epoch alone (resume)
        start, losses = time.perf_counter(), []
        bar = tqdm(train_loader, desc=f"epoch {epoch}", disable=not (config.progress and main))
        for batch in bar:
            with accelerator.accumulate(model):
                logits = model(batch["images"], batch["ids"], batch["padding_mask"])
                loss = _loss(logits, batch["labels"], config)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    if config.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        train_loss = accelerator.gather(torch.stack(losses).mean()[None]).mean().item()
        entry = {"epoch": epoch, "train_loss": train_loss, "seconds": time.perf_counter() - start}
        metrics = None
        if val_loader is not None:
            metrics = _validate(accelerator, model, val_loader, val_examples, vocab)
            entry["validation"] = metrics
        history.append(entry)
        accuracy = None if metrics is None else metrics["overall"]
        logger.info(
            "epoch %d: train loss %.4f%s (%.1f s)",
            epoch,
            train_loss,
            "" if accuracy is None else f", validation accuracy {accuracy:.4f}",
            entry["seconds"],
        )
        improved = accuracy is None or best_accuracy is None or accuracy > best_accuracy
        if improved:
            best_accuracy, best_epoch, stale = accuracy, epoch, 0
            save(best_dir, epoch, metrics)
        else:
            stale += 1
        state = {"history": history, "best_accuracy": best_accuracy, "best_epoch": best_epoch, "stale": stale}
        save_checkpoint(accelerator, output_dir / CHECKPOINTS, epoch * steps_per_epoch, state, keep=1)
        if main:
            _write_history(output_dir, key, state, finished=False)
        stopped = bool(config.patience and stale >= config.patience)
        if stopped:
            logger.info("no better validation accuracy for %d epochs: stopping after epoch %d", stale, epoch)
    save(last_dir, history[-1]["epoch"], history[-1].get("validation"))
    if main:
        _write_history(output_dir, key, state, finished=True)
        shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)  # the run is complete in best/ and last/
    accelerator.wait_for_everyone()
    logger.info("best epoch %d (validation accuracy %s); model in %s", best_epoch, best_accuracy, best_dir)
    accelerator.end_training()
    return VQATrainResult(output_dir, best_dir, best_epoch, best_accuracy, len(vocab), history)


def _resume(accelerator, previous: PreviousRun | None, output_dir: Path) -> dict:
    """The trainer state to continue from: the previous run's checkpoint (restored into the accelerator's
    model, optimizer, scheduler and random states), else a fresh one."""
    if previous is None:
        return {"history": [], "best_accuracy": None, "best_epoch": 0, "stale": 0}
    state = load_checkpoint(accelerator, previous.checkpoint)
    logger.info("resuming the run in %s after epoch %d", output_dir, len(state["history"]))
    return {k: state[k] for k in ("history", "best_accuracy", "best_epoch", "stale")}


def _write_history(output_dir: Path, key: str, state: dict, finished: bool) -> None:
    write_json(
        output_dir / HISTORY_FILENAME,
        {"run_key": key, "finished": finished, **{k: state[k] for k in ("history", "best_epoch", "best_accuracy")}},
    )


def read_history(output_dir: str | os.PathLike) -> dict:
    """The ``history.json`` a training run wrote."""
    return json.loads((Path(output_dir) / HISTORY_FILENAME).read_text())
