"""Append-only files of fixed-width rows: what an index stores per patch (coordinates, vectors) and per slide.

A file only grows while it is written; the index's manifest records how many rows are committed, and readers
look at those only. Rows past that count are what a killed writer left: the next writer cuts them off before
it appends. So a file is never rewritten in place and a reader never sees a half-written row.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["RowFile"]


class RowFile:
    """Rows of ``width`` values of ``dtype`` in the raw file ``path`` (no header: the manifest has the count)."""

    def __init__(self, path: str | os.PathLike, dtype, width: int):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.width = int(width)
        self.row_bytes = self.dtype.itemsize * self.width

    def rows_on_disk(self) -> int:
        return self.path.stat().st_size // self.row_bytes if self.path.exists() else 0

    def truncate(self, rows: int) -> None:
        """Keep the first ``rows`` rows (the committed ones), dropping what an interrupted writer appended."""
        on_disk = self.rows_on_disk()
        if on_disk < rows:
            raise ValueError(f"{self.path} holds {on_disk} rows but the index records {rows}: the index is damaged")
        if not self.path.exists():
            self.path.touch()
        if self.path.stat().st_size != rows * self.row_bytes:
            os.truncate(self.path, rows * self.row_bytes)

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype).reshape(-1, self.width)
        with open(self.path, "ab") as f:
            f.write(values.tobytes())

    def sync(self) -> None:
        """Make the appended rows durable before the manifest (or a journal) says they exist."""
        if self.path.exists():
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def read(self, rows: int) -> np.ndarray:
        """The first ``rows`` rows, memory-mapped read-only ((rows, width); an empty array when there are none)."""
        if rows == 0:
            return np.zeros((0, self.width), dtype=self.dtype)
        on_disk = self.rows_on_disk()
        if on_disk < rows:
            raise ValueError(f"{self.path} holds {on_disk} rows but the index records {rows}: the index is damaged")
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(rows, self.width))
