"""Wording shared by error messages."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["LISTED", "listing"]

LISTED = 10
"""How many items an error message names before it says how many more there are."""


def listing(items: Iterable, limit: int = LISTED, sort: bool = False) -> str:
    """``"a, b, c"``, or ``"a, b, ... and 7 more"`` past ``limit`` items (sorted first when ``sort``)."""
    items = [str(item) for item in items]
    if sort:
        items.sort()
    shown = ", ".join(items[:limit])
    return f"{shown} ... and {len(items) - limit} more" if len(items) > limit else shown
