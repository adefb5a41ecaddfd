"""The case and label of each slide, from a CSV with ``slide``, ``case`` and ``label`` columns (``slide_id`` and
``case_id``, the MIL manifest's names, are read too); empty cells mean unknown."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from ..messages import listing
from .records import SearchError

__all__ = ["CaseInfo", "check_cases_indexed", "read_cases"]

_COLUMNS = {"slide": ("slide", "slide_id"), "case": ("case", "case_id"), "label": ("label",)}


@dataclass(frozen=True)
class CaseInfo:
    case: str | None
    label: str | None


def read_cases(path: str | os.PathLike) -> dict[str, CaseInfo]:
    """Slide name -> case and label; ``SearchError`` names the file and row of a problem."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no manifest at {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        found = {key: next((c for c in names if c in columns), None) for key, names in _COLUMNS.items()}
        if found["slide"] is None:
            raise SearchError(f"{path} needs a 'slide' column (and 'case', 'label'); it has {listing(columns)}")
        cases: dict[str, CaseInfo] = {}
        for number, row in enumerate(reader, start=2):
            name = (row.get(found["slide"]) or "").strip()
            if not name:
                raise SearchError(f"{path} row {number}: empty slide name")
            if name in cases:
                raise SearchError(f"{path} row {number}: slide {name!r} is listed twice")
            values = {key: (row.get(column) or "").strip() or None if column else None for key, column in found.items()}
            cases[name] = CaseInfo(values["case"], values["label"])
    return cases


def check_cases_indexed(cases: dict[str, CaseInfo], indexed: set[str], source: str | os.PathLike) -> None:
    """``SearchError`` when the manifest names slides the index does not (and will not) hold."""
    unknown = sorted(set(cases) - indexed)
    if unknown:
        raise SearchError(f"{source} names {len(unknown)} slide(s) that are not indexed: {listing(unknown)}; "
                          "remove those rows or index their features")  # fmt: skip
