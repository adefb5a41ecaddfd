"""VQA metrics (overall, closed yes/no, open exact match, per question type) and the predictions table."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..tables import write_csv
from .answers import is_closed, normalize_answer
from .data import VQAExample
from .predict import predict
from .saved import SavedVQA

__all__ = ["VQAReport", "compute_metrics", "evaluate_vqa", "write_predictions_csv"]

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = (
    "id",
    "image",
    "question",
    "question_type",
    "closed",
    "answer",
    "prediction",
    "probability",
    "correct",
)


@dataclass
class VQAReport:
    """Metrics of one evaluation and the per-example predictions behind them."""

    metrics: dict
    examples: list[VQAExample] = field(repr=False)
    predictions: list[str] = field(repr=False)
    probabilities: list[float] = field(repr=False)


def _accuracy(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def compute_metrics(examples: Sequence[VQAExample], predictions: Sequence[str], known: set[str] | None = None) -> dict:
    """Exact-match accuracies after normalisation: ``overall``, ``closed`` (yes/no questions), ``open``, and
    ``per_type`` {type: {accuracy, n}}; None where a group is empty. With ``known`` (the model's answers), also
    counts the ground-truth answers outside it (``unknown_answers``: always scored wrong)."""
    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    if not examples:
        raise ValueError("nothing to evaluate: no examples")
    correct = [normalize_answer(p) == normalize_answer(e.answer) for e, p in zip(examples, predictions, strict=True)]
    closed = [is_closed(e.answer) for e in examples]
    by_type: dict[str, list[bool]] = defaultdict(list)
    for e, ok in zip(examples, correct, strict=True):
        by_type[e.question_type].append(ok)
    metrics = {
        "overall": _accuracy(correct),
        "closed": _accuracy([ok for ok, c in zip(correct, closed, strict=True) if c]),
        "open": _accuracy([ok for ok, c in zip(correct, closed, strict=True) if not c]),
        "n": len(examples),
        "n_closed": sum(closed),
        "n_open": len(examples) - sum(closed),
        "per_type": {t: {"accuracy": _accuracy(v), "n": len(v)} for t, v in sorted(by_type.items())},
    }
    if known is not None:
        metrics["unknown_answers"] = sum(normalize_answer(e.answer) not in known for e in examples)
    return metrics


def evaluate_vqa(
    saved: SavedVQA, examples: Sequence[VQAExample], batch_size: int = 32, num_workers: int = 0, progress: bool = False
) -> VQAReport:
    """Answer every example with ``saved`` (in its precision) and score the answers (:func:`compute_metrics`)."""
    result = predict(saved, examples, batch_size, num_workers, progress)
    answers = [saved.vocab.answer(int(i)) for i in result.indices]
    metrics = compute_metrics(examples, answers, known=set(saved.vocab.answers))
    if metrics["unknown_answers"]:
        logger.warning(
            "%d of %d answers are outside the model's vocabulary (scored wrong)",
            metrics["unknown_answers"],
            len(examples),
        )
    logger.info(
        "accuracy %.4f (closed %s, open %s) on %d questions",
        metrics["overall"],
        _fmt(metrics["closed"]),
        _fmt(metrics["open"]),
        metrics["n"],
    )
    return VQAReport(metrics, list(examples), answers, result.probabilities.tolist())


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def write_predictions_csv(path: str | os.PathLike, report: VQAReport) -> Path:
    """One row per question: id, image, question, type, closed, answer, prediction, probability, correct
    (text that a spreadsheet would run as a formula is neutralised: :mod:`musk.tables`)."""
    rows = (
        [e.id, e.image_name, e.question, e.question_type, int(is_closed(e.answer)), e.answer, pred, f"{prob:.4f}",
         int(normalize_answer(pred) == normalize_answer(e.answer))]
        for e, pred, prob in zip(report.examples, report.predictions, report.probabilities, strict=True)
    )  # fmt: skip
    write_csv(path, PREDICTION_COLUMNS, rows)
    return Path(path)
