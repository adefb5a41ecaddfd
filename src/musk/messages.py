"""Wording shared by error messages."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["LISTED", "listing"]

LISTED = 10
"""How many items an error message names before it says how many more there are."""


def listing(items: Iterable, limit: int = LISTED, sort: bool = False, sep: str = ", ") -> str:
    """``"a, b, c"``, or ``"a, b ... and 7 more"`` past ``limit`` items (sorted first when ``sort``; joined by
    ``sep``)."""
    items = [str(item) for item in items]
    if sort:
        items.sort()
    shown = sep.join(items[:limit])
    if len(items) <= limit:
        return shown
    gap = sep if "\n" in sep else " "
    return f"{shown}{gap}... and {len(items) - limit} more"
