"""Writing query results: CSV (spreadsheet-safe cells) or JSON Lines for a ``.jsonl`` name, atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..files import atomic_path
from ..tables import write_csv

__all__ = ["write_results"]


def write_results(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str]) -> Path:
    """``rows`` (dicts keyed by ``columns``) to ``path``: JSON Lines when it ends in ``.jsonl``, else CSV."""
    path = Path(path)
    if path.suffix == ".jsonl":
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps({name: row.get(name) for name in columns}) + "\n")
    else:
        write_csv(path, columns, [{k: "" if v is None else v for k, v in row.items()} for row in rows])
    return path
