"""CSV tables that spreadsheets open safely: a text cell that would start a formula is neutralised.

Excel, LibreOffice and Google Sheets run a cell that begins with ``=``, ``+``, ``-`` or ``@`` (or a tab or
carriage return before one) as a formula, so a slide or class name such as ``=HYPERLINK(...)`` in a results
table would act when a user opens it. Such text cells get a leading apostrophe, which spreadsheets show as
plain text (the OWASP rule). Numbers, and text that reads as a number (``-0.25``), are written as they are.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import IO

from .files import atomic_path

__all__ = ["FORMULA_STARTS", "spreadsheet_safe", "write_csv", "write_csv_rows"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """``value`` unchanged, unless it is text that a spreadsheet would run as a formula: then ``'`` + value."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def write_csv_rows(stream: IO[str], header: Sequence[str], rows: Iterable[Sequence | Mapping]) -> None:
    """``header`` then ``rows`` (sequences, or mappings keyed by the header) to an open text stream."""
    writer = csv.writer(stream)
    writer.writerow([spreadsheet_safe(name) for name in header])
    for row in rows:
        cells = [row.get(name, "") for name in header] if isinstance(row, Mapping) else row
        writer.writerow([spreadsheet_safe(cell) for cell in cells])


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence | Mapping]) -> None:
    """A CSV file written atomically (see :func:`musk.files.atomic_path`), its text cells neutralised."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        write_csv_rows(f, header, rows)
