"""Temporary files a killed process left in a job directory, removed by the next process that holds their lock.

Every output is written under a temporary name (``.<name>.<token>.partial<suffix>``, :func:`musk.files.atomic_path`)
and renamed; a process killed in between leaves that temporary file. Whoever holds the lock guarding a file
knows no live process is writing it, so the temporary files it finds are stale.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path

from .layout import JOB_FILES, SLIDE_FILES, JobLayout

__all__ = ["remove_job_file_leftovers", "remove_slide_leftovers"]

logger = logging.getLogger(__name__)


def _partials(folder: Path, name: str) -> list[Path]:
    suffix = Path(name).suffix
    return list(folder.glob(f".{glob.escape(name)}.*.partial{suffix}"))


def _remove(paths: list[Path]) -> None:
    for path in paths:
        logger.info("removing %s, left by an interrupted run", path)
        path.unlink(missing_ok=True)


def remove_job_file_leftovers(layout: JobLayout) -> None:
    """The temporary files of ``config.json``, ``status.csv`` and ``summary.json`` (hold the job lock)."""
    _remove([p for name in JOB_FILES for p in _partials(layout.root, name)])


def remove_slide_leftovers(layout: JobLayout, name: str) -> None:
    """The temporary files of the slide ``name``'s outputs and record (hold the slide's lock)."""
    paths = [p for folder, suffix in SLIDE_FILES.items() for p in _partials(layout.root / folder, f"{name}{suffix}")]
    _remove(paths + list(layout.heatmaps(name).glob(".*.partial*")))
