"""Reading JSON Lines: one JSON value per non-blank line, errors naming the file and the line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator

__all__ = ["numbered_json_lines", "parse_json_lines"]


def numbered_json_lines(lines: Iterable[str], source: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """``(line number, value)`` of the non-blank ``lines`` (numbered as in the file, blank lines counted); a line
    that is not JSON raises a ValueError naming ``source`` and its line number."""
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{source}, line {number}: not JSON ({e})") from e


def parse_json_lines(lines: Iterable[str], source: str | os.PathLike) -> list:
    """The values of the non-blank ``lines``; errors as :func:`numbered_json_lines`."""
    return [value for _, value in numbered_json_lines(lines, source)]
