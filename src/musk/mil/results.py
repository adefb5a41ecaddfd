"""Predictions as tables: one row per case, written as ``predictions.csv`` (cells safe for spreadsheets)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..tables import write_csv
from .manifest import Cohort

__all__ = ["prediction_rows", "write_predictions_csv"]


def prediction_rows(cohort: Cohort, indices: Iterable[int], predictions: np.ndarray, fold: int | None) -> list[dict]:
    """One dict per case: ids, the true target and the prediction (class probabilities or risk)."""
    rows = []
    for i, pred in zip(indices, predictions, strict=True):
        case = cohort.cases[int(i)]
        row = {"case_id": case.case_id, "slide_ids": ";".join(case.slide_ids)}
        if fold is not None:
            row["fold"] = fold
        if cohort.task == "classification":
            row["label"] = cohort.classes[case.label] if case.label is not None else ""
            row["predicted"] = cohort.classes[int(np.argmax(pred))]
            row.update({f"prob_{name}": float(p) for name, p in zip(cohort.classes, pred, strict=True)})
        else:
            row.update({"time": case.time, "event": case.event, "risk": float(pred)})
        rows.append(row)
    return rows


def write_predictions_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """``rows`` as a CSV table (the columns in order of first appearance), written atomically; text cells that
    a spreadsheet would run as formulas are neutralised (:mod:`musk.tables`)."""
    path = Path(path)
    write_csv(path, list(dict.fromkeys(k for row in rows for k in row)), rows)
    return path
