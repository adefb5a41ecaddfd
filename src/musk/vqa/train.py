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
from ..loaded import load
from ..models import DEFAULT_MODEL, PUBLISHED
from ..provenance import provenance
from ..runtime import accelerate_mixed_precision
from ..tokenizer import MuskTokenizer
from ..training.checkpoint import load_checkpoint, save_checkpoint
from ..training.optim import build_optimizer
from ..training.precision import ACCELERATE_PRECISIONS
from ..training.schedule import set_lr, warmup_cosine
from ..training.selection import ModelSelection
from .answers import AnswerVocab
from .data import VQACollator, VQADataset, VQAExample, load_split
from .evaluate import compute_metrics
from .model import MuskVQA
from .runs import CHECKPOINTS, HISTORY_FILENAME, PreviousRun, clear_run, find_previous_run, run_key
from .saved import save_vqa_model

__all__ = ["LOSSES", "VQATrainConfig", "VQATrainResult", "train_vqa"]

logger = logging.getLogger(__name__)

LOSSES = ("ce", "bce")


@dataclass
class VQATrainConfig:
    """Everything a VQA fine-tuning run depends on (saved with the model).

    ``weights``: the MUSK weights to start from (``published``, a hub id, a local file or folder), None or
    ``none`` for a random start. ``tokenizer``: the question tokenizer (default: beside local weights, else the
    hub's). ``val_split``: None trains without validation (the last epoch is kept, no early stopping).
    ``precision``: accelerate's mixed precision, ``auto`` (kept for compatibility) = bf16 on a GPU that has it,
    fp16 on other GPUs, fp32 on CPU. ``loss``: ``ce`` (softmax cross-entropy) or ``bce`` (BEiT-3's soft-score
    binary cross-entropy). ``patience``: stop after this many evaluations without a better validation accuracy
    (0: never stop early). ``overwrite``: replace a different (or finished) run in ``output_dir`` instead of
    refusing to start; the same run, unfinished, is always resumed.
    """

    data: str | None = None
    output_dir: str = "musk-vqa"
    model: str = DEFAULT_MODEL
    weights: str | None = PUBLISHED
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
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.precision not in ACCELERATE_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(ACCELERATE_PRECISIONS)}, got {self.precision!r}")
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


@dataclass
class _Run:
    """A run ready to train: the prepared model, optimizer and data, the schedule, and what is saved with the
    model (vocabulary, tokenizer, provenance record)."""

    accelerator: object
    model: MuskVQA
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    val_loader: DataLoader | None
    order: torch.Generator
    vocab: AnswerVocab
    tokenizer: MuskTokenizer
    record: dict
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def train_vqa(
    config: VQATrainConfig,
    train_examples: Sequence[VQAExample] | None = None,
    val_examples: Sequence[VQAExample] | None = None,
) -> VQATrainResult:
    """Fine-tune a MUSK model for VQA; writes ``best/`` (the best validation epoch), ``last/`` and
    ``history.json`` under ``config.output_dir``. Examples are read from ``config.data`` unless given."""
    accelerator = _accelerator(config)
    train_examples, val_examples = _examples(config, train_examples, val_examples)
    vocab = AnswerVocab.build((e.answer for e in train_examples), config.min_answer_count)
    train_examples = _known_answers(train_examples, vocab)
    logger.info("answer vocabulary: %d answers (min count %d)", len(vocab), config.min_answer_count)

    output_dir = Path(config.output_dir)
    key = run_key(config, train_examples, val_examples)
    previous = find_previous_run(output_dir, key, config.overwrite)
    if previous is not None and previous.checkpoint is None:
        done = previous.record
        logger.info("%s already holds this finished run (best epoch %d): nothing to do", output_dir, done["best_epoch"])
        return VQATrainResult(output_dir, output_dir / "best", done["best_epoch"], done.get("best_accuracy"),
                              len(vocab), done["history"])  # fmt: skip
    if previous is None and config.overwrite and accelerator.is_main_process:
        clear_run(output_dir)
    accelerator.wait_for_everyone()

    run = _prepare(config, accelerator, train_examples, val_examples, vocab, key)
    history, selection = _resume(accelerator, previous, config.patience, output_dir)
    if accelerator.is_main_process:  # names the run in the folder before anything else is written
        _write_history(output_dir, key, history, selection, finished=False)
    logger.info(
        "training on %d questions for epochs %d..%d: %d optimizer steps (%d warm-up), %d process(es), precision %s",
        len(train_examples), len(history) + 1, config.epochs, run.total_steps, run.warmup_steps,
        accelerator.num_processes, accelerator.mixed_precision,
    )  # fmt: skip
    for epoch in range(len(history) + 1, config.epochs + 1):
        if selection.should_stop:
            logger.info("no better validation accuracy for %d epochs: stopped after epoch %d", selection.stale,
                        epoch - 1)  # fmt: skip
            break
        history.append(_epoch(run, config, epoch, val_examples))
        metrics = history[-1].get("validation")
        if _is_best(selection, epoch, None if metrics is None else metrics["overall"]):
            _save_model(run, config, output_dir / "best", epoch, metrics)
        state = _trainer_state(history, selection)
        save_checkpoint(accelerator, output_dir / CHECKPOINTS, epoch * run.steps_per_epoch, state, keep=1)
        if accelerator.is_main_process:
            _write_history(output_dir, key, history, selection, finished=False)
    return _finish(run, config, output_dir, key, history, selection)


def _accelerator(config: VQATrainConfig):
    """The run's accelerator (mixed precision, gradient accumulation), seeded; other processes only warn."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(
        cpu=config.cpu,
        mixed_precision=accelerate_mixed_precision(config.precision, config.cpu),
        gradient_accumulation_steps=config.grad_accum,
    )
    set_seed(config.seed)
    if not accelerator.is_main_process:
        logging.getLogger("musk").setLevel(logging.WARNING)
    return accelerator


def _examples(
    config: VQATrainConfig, train: Sequence[VQAExample] | None, validation: Sequence[VQAExample] | None
) -> tuple[Sequence[VQAExample], Sequence[VQAExample] | None]:
    """The training and validation examples: those given, else read from ``config.data``; never empty."""
    if (train is None or (validation is None and config.val_split)) and config.data is None:
        raise ValueError("no training data: set data (a folder or file) or pass the examples")
    if train is None:
        train = load_split(config.data, config.train_split)
    if validation is None and config.val_split:
        validation = load_split(config.data, config.val_split)
    if not train:
        raise ValueError("the training split is empty")
    if validation is not None and not validation:
        raise ValueError("the validation split is empty")
    return train, validation


def _known_answers(examples: Sequence[VQAExample], vocab: AnswerVocab) -> list[VQAExample]:
    kept = [e for e in examples if vocab.index(e.answer) >= 0]
    if len(kept) < len(examples):
        logger.info("training on %d of %d questions: %d have answers seen fewer than %d times", len(kept),
                    len(examples), len(examples) - len(kept), vocab.min_count)  # fmt: skip
    return kept


def _prepare(
    config: VQATrainConfig,
    accelerator,
    train: Sequence[VQAExample],
    validation: Sequence[VQAExample] | None,
    vocab: AnswerVocab,
    key: str,
) -> _Run:
    """The MUSK (through :func:`musk.load`) under a fresh answer head, its optimizer and the data, prepared."""
    loaded = load(config.model, weights=config.weights, device=accelerator.device, tokenizer=config.tokenizer,
                  cache_dir=config.cache_dir, seed=config.seed)  # fmt: skip
    if config.grad_checkpointing:
        loaded.model.set_grad_checkpointing(True)
    model = MuskVQA(loaded.model, len(vocab)).train()
    collate = VQACollator(loaded.tokenizer, config.max_question_length)
    order = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(VQADataset(train, loaded.transform, vocab), batch_size=config.batch_size, shuffle=True,
                              generator=order, num_workers=config.num_workers, collate_fn=collate)  # fmt: skip
    optimizer = build_optimizer(model, config.lr, config.weight_decay, config.layer_decay)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    val_loader = None
    if validation is not None:
        val_loader = accelerator.prepare(
            DataLoader(VQADataset(validation, loaded.transform, vocab), collate_fn=collate,
                       batch_size=config.eval_batch_size or config.batch_size, num_workers=config.num_workers)
        )  # fmt: skip
    steps_per_epoch = math.ceil(len(train_loader) / config.grad_accum)
    total_steps = config.epochs * steps_per_epoch
    record = provenance(asdict(config), loaded.fingerprint)
    record.update(processes=accelerator.num_processes, mixed_precision=accelerator.mixed_precision, run_key=key)
    return _Run(accelerator, model, optimizer, train_loader, val_loader, order, vocab, loaded.tokenizer, record,
                steps_per_epoch, total_steps, int(config.warmup_ratio * total_steps))  # fmt: skip


def _resume(
    accelerator, previous: PreviousRun | None, patience: int, output_dir: Path
) -> tuple[list[dict], ModelSelection]:
    """The history and model selection to continue from: the previous run's checkpoint (restored into the
    accelerator's model, optimizer and random states; the learning rate follows the step), else fresh ones."""
    if previous is None:
        return [], ModelSelection("max", patience)
    state = load_checkpoint(accelerator, previous.checkpoint)
    logger.info("resuming the run in %s after epoch %d", output_dir, len(state["history"]))
    selection = ModelSelection("max", patience, best=state["best_accuracy"], best_epoch=state["best_epoch"] or None,
                               stale=state["stale"])  # fmt: skip
    return state["history"], selection


def _epoch(run: _Run, config: VQATrainConfig, epoch: int, validation: Sequence[VQAExample] | None) -> dict:
    """Train one epoch (and score the validation split); its history entry."""
    accelerator, model, optimizer = run.accelerator, run.model, run.optimizer
    run.order.manual_seed(config.seed + epoch - 1)  # each epoch's order depends on the epoch alone (resume)
    step = (epoch - 1) * run.steps_per_epoch
    start, losses = time.perf_counter(), []
    bar = tqdm(run.train_loader, desc=f"epoch {epoch}", disable=not (config.progress and accelerator.is_main_process))
    for batch in bar:
        with accelerator.accumulate(model):
            loss = _loss(model(batch["images"], batch["ids"], batch["padding_mask"]), batch["labels"], config)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                if config.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                set_lr(optimizer, warmup_cosine(step, run.warmup_steps, run.total_steps, config.min_lr_ratio))
                step += 1
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    train_loss = accelerator.gather(torch.stack(losses).mean()[None]).mean().item()
    entry = {"epoch": epoch, "train_loss": train_loss, "seconds": time.perf_counter() - start}
    if run.val_loader is not None:
        entry["validation"] = _validate(accelerator, model, run.val_loader, validation, run.vocab)
    accuracy = entry.get("validation", {}).get("overall")
    logger.info("epoch %d: train loss %.4f%s (%.1f s)", epoch, train_loss,
                "" if accuracy is None else f", validation accuracy {accuracy:.4f}", entry["seconds"])  # fmt: skip
    return entry


def _loss(logits: torch.Tensor, labels: torch.Tensor, config: VQATrainConfig) -> torch.Tensor:
    logits = logits.float()
    if config.loss == "ce":
        return F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    targets = F.one_hot(labels, logits.shape[-1]).float()
    # BEiT-3 scales the mean over (batch, answers) by the number of answers: a sum over answers per question.
    return F.binary_cross_entropy_with_logits(logits, targets) * logits.shape[-1]


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


def _is_best(selection: ModelSelection, epoch: int, accuracy: float | None) -> bool:
    """Whether the model of ``epoch`` is the best so far by validation accuracy; without validation, the newest is."""
    if accuracy is None:
        selection.best_epoch = epoch
        return True
    return selection.update(epoch, accuracy)


def _save_model(run: _Run, config: VQATrainConfig, directory: Path, epoch: int, metrics: dict | None) -> None:
    if run.accelerator.is_main_process:
        save_vqa_model(run.accelerator.unwrap_model(run.model), run.vocab, directory, tokenizer=run.tokenizer,
                       max_question_length=config.max_question_length, architecture=config.model,
                       provenance={**run.record, "epoch": epoch, "validation": metrics})  # fmt: skip
    run.accelerator.wait_for_everyone()


def _finish(run: _Run, config: VQATrainConfig, output_dir: Path, key: str, history: list[dict],
            selection: ModelSelection) -> VQATrainResult:  # fmt: skip
    """Write ``last/`` and the finished history; the checkpoints go (the run is complete in best/ and last/)."""
    _save_model(run, config, output_dir / "last", history[-1]["epoch"], history[-1].get("validation"))
    if run.accelerator.is_main_process:
        _write_history(output_dir, key, history, selection, finished=True)
        shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)
    run.accelerator.wait_for_everyone()
    logger.info("best epoch %d (validation accuracy %s); model in %s", selection.best_epoch, selection.best,
                output_dir / "best")  # fmt: skip
    run.accelerator.end_training()
    return VQATrainResult(output_dir, output_dir / "best", selection.best_epoch, selection.best, len(run.vocab),
                          history)  # fmt: skip


def _trainer_state(history: list[dict], selection: ModelSelection) -> dict:
    """What a checkpoint and ``history.json`` keep of the run (the keys of earlier versions)."""
    return {"history": history, "best_accuracy": selection.best, "best_epoch": selection.best_epoch or 0,
            "stale": selection.stale}  # fmt: skip


def _write_history(output_dir: Path, key: str, history: list[dict], selection: ModelSelection, finished: bool) -> None:
    state = _trainer_state(history, selection)
    write_json(output_dir / HISTORY_FILENAME, {"run_key": key, "finished": finished,
               **{k: state[k] for k in ("history", "best_epoch", "best_accuracy")}})  # fmt: skip


def read_history(output_dir: str | os.PathLike) -> dict:
    """The ``history.json`` a training run wrote."""
    return json.loads((Path(output_dir) / HISTORY_FILENAME).read_text())
