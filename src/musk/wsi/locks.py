"""The locks of a job directory: one per slide, held by the process working on it, and one for the job files.

POSIX record locks: the kernel releases them when the holder exits or is killed, so no stale lock survives.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .layout import JobLayout
from .leftovers import remove_job_file_leftovers

__all__ = ["exclusive_lock", "job_files_lock"]


@contextmanager
def exclusive_lock(path: str | os.PathLike, wait: bool = False) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` if no other process does (or, with ``wait``, once none does); yields
    whether it was taken."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): one process per job directory
            yield True
            return
        try:
            fcntl.lockf(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


@contextmanager
def job_files_lock(layout: JobLayout) -> Iterator[None]:
    """Hold the lock every writer of the job files holds (waiting for it), after removing the temporary files a
    killed process left for them (with the lock held, any that exist are stale)."""
    with exclusive_lock(layout.job_lock, wait=True):
        remove_job_file_leftovers(layout)
        yield
