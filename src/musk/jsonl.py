"""Reading JSON Lines: one JSON value per non-blank line, errors naming the file and the line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

__all__ = ["parse_json_lines"]


def parse_json_lines(lines: Iterable[str], source: str | os.PathLike) -> list:
    """The values of the non-blank ``lines``; a line that is not JSON raises a ValueError naming ``source``
    and its line number."""
    values = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                values.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{source}, line {number}: not JSON ({e})") from e
    return values
