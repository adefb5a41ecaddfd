"""Result records: one JSON object per (model, dataset, task[, fewshot_k, seed]) run, stored as JSON Lines.

Several runs may share one output file, as upstream's ``--output result.json`` does: a new record replaces
the one with the same run key and the file is rewritten atomically, so an interrupted run never leaves a
half-written line and a rerun does not duplicate records.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..files import atomic_path
from ..jsonl import parse_json_lines

RUN_KEY = ("model", "pretrained", "dataset", "task", "fewshot_k", "seed")


def run_key(record: dict) -> tuple:
    return tuple(record.get(k) for k in RUN_KEY)


def read_records(path: str | os.PathLike) -> list[dict]:
    """Records of a results file: JSON Lines, or one JSON object, or a JSON list of objects."""
    path = Path(path)
    text = path.read_text()
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        pass
    return parse_json_lines(text.splitlines(), path)


def has_record(path: str | os.PathLike, key: tuple) -> bool:
    path = Path(path)
    return path.is_file() and any(run_key(r) == key for r in read_records(path))


def write_record(path: str | os.PathLike, record: dict) -> None:
    """Add ``record`` to the JSON Lines file ``path`` (replacing a record of the same run), atomically."""
    path = Path(path)
    records = [r for r in read_records(path) if run_key(r) != run_key(record)] if path.is_file() else []
    records.append(record)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, default=_plain) + "\n" for r in records))


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def all_records(paths: Iterable[str | os.PathLike]) -> list[dict]:
    return [r for p in paths for r in read_records(p)]
