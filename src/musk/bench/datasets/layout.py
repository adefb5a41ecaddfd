"""Helpers the dataset loaders share: checked file access with errors that name the expected file."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...images import IMAGE_EXTENSIONS
from ..data import DatasetLayoutError

if TYPE_CHECKING:
    import pandas as pd


def require(path: Path, dataset: str, what: str = "file") -> Path:
    """``path`` if it exists, else a :class:`DatasetLayoutError` naming it and what it should hold."""
    if not path.exists():
        raise DatasetLayoutError(f"{dataset}: expected {what} {str(path)!r}, which does not exist (see docs/bench.md)")
    return path


def check_split(dataset: str, split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ValueError(f"{dataset} has the splits {list(allowed)}, not {split!r}")


def read_table(path: Path, dataset: str, columns: Sequence[str]) -> pd.DataFrame:
    """A CSV file that must have ``columns``."""
    import pandas as pd

    require(path, dataset)
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DatasetLayoutError(f"{dataset}: cannot parse {path}: {exc}") from exc
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DatasetLayoutError(f"{dataset}: {path} lacks the column(s) {missing}; it has {list(table.columns)}")
    return table


def read_excel(path: Path, dataset: str, columns: Sequence[str]) -> pd.DataFrame:
    """An .xlsx sheet that must have ``columns`` (pandas reads it with openpyxl)."""
    import pandas as pd

    require(path, dataset)
    try:
        table = pd.read_excel(path)
    except ImportError as exc:
        raise DatasetLayoutError(f"{dataset}: reading {path} needs openpyxl: pip install openpyxl") from exc
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DatasetLayoutError(f"{dataset}: {path} lacks the column(s) {missing}; it has {list(table.columns)}")
    return table


def read_json(path: Path, dataset: str):
    require(path, dataset)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetLayoutError(f"{dataset}: {path} is not valid JSON: {exc}") from exc


def images_in(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted; hidden files skipped."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def class_folders(root: Path, dataset: str, folders: Sequence[str]) -> tuple[list[Path], list[int]]:
    """Images of ``root/<folder>/`` for each class folder; label = the folder's position in ``folders``."""
    paths, labels = [], []
    for label, folder in enumerate(folders):
        found = images_in(require(root / folder, dataset, "class folder"))
        paths += found
        labels += [label] * len(found)
    return paths, labels


def hash_split(keys: Sequence[str], split: str, test_fraction: float = 0.3) -> np.ndarray:
    """Positions of ``keys`` in ``split`` for datasets without an official split: a key goes to "test" when
    the first 8 bytes of its SHA-1 read as a fraction fall below ``test_fraction``. The split does not depend
    on the order or number of other files."""
    fractions = np.array([int(hashlib.sha1(k.encode()).hexdigest()[:16], 16) / 2**64 for k in keys])
    in_test = fractions < test_fraction
    return np.flatnonzero(in_test if split == "test" else ~in_test)
