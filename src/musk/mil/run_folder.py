"""The output folder of a training run, and the record of what runs of ours wrote there.

A run writes ``fold_<k>/`` folders and the files of :data:`OUTPUTS` and lists each in :data:`RECORD` before
writing it. A later run into the same folder replaces or removes only entries listed there; other files (an
``eval`` subfolder, notes) are left alone. A folder that holds anything when no run of ours recorded it, or
that holds an entry of ours a run did not record, is refused unless ``overwrite`` is given.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ..files import check_file_target, write_json
from ..messages import listing
from .saved import fold_index

__all__ = ["OUTPUTS", "RECORD", "RunFolder"]

logger = logging.getLogger(__name__)

RECORD = ".musk-mil-run.json"
FORMAT = "musk-mil-run"
#: What a run writes at the top of its folder, besides ``fold_<k>/`` folders.
OUTPUTS = ("report_embeddings.npz", "km.png", "predictions.csv", "results.json", "provenance.json")


def _is_output(name: str) -> bool:
    return name in OUTPUTS or fold_index(Path(name)) is not None


class RunFolder:
    """``path`` and the entries runs of ours wrote in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.written: set[str] = set()

    def _record(self) -> set[str] | None:
        """The entries recorded in the folder, None when no run of ours recorded any (or the record is damaged)."""
        try:
            record = json.loads((self.path / RECORD).read_text())
        except (OSError, ValueError):
            return None
        written = record.get("written") if isinstance(record, dict) and record.get("format") == FORMAT else None
        return {str(name) for name in written} if isinstance(written, list) else None

    def check(self, overwrite: bool = False) -> None:
        """Refuse (``ValueError``) a folder that is not ours to write in, before any work: see the module."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--output_dir {self.path} is a file, not a folder")
        check_file_target(self.path / RECORD, "--output_dir")
        present = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
        recorded = self._record()
        if recorded is None:
            foreign = [name for name in present if name != RECORD]
        else:
            foreign = [name for name in present if _is_output(name) and name not in recorded]
        if foreign and not overwrite:
            whose = "no training run of ours recorded" if recorded is None else "an earlier run did not record"
            raise ValueError(
                f"--output_dir {self.path} holds {listing(foreign)}, which {whose} writing; nothing there is removed "
                "or replaced without your say: choose a new or empty folder, or pass --overwrite (overwrite=True) to "
                "let this run replace its own outputs there (other files are left alone)"
            )
        self.written = (recorded or set()) | {name for name in present if _is_output(name)}

    def _save(self) -> None:
        write_json(self.path / RECORD, {"format": FORMAT, "written": sorted(self.written)})

    def will_write(self, *names: str) -> None:
        """Record ``names`` (entries of this folder) as ours before writing them."""
        if not set(names) <= self.written or not (self.path / RECORD).is_file():
            self.written.update(names)
            self._save()

    def remove_folds_from(self, folds: int) -> None:
        """Delete the recorded ``fold_<k>`` folders with ``k >= folds`` (left by an earlier run with more folds),
        so they are never taken for this run's."""
        stale = [name for name in sorted(self.written) if (k := fold_index(Path(name))) is not None and k >= folds]
        for name in stale:
            path = self.path / name
            if path.is_dir() and not path.is_symlink():
                logger.warning("removing %s: left by an earlier run with more folds", path)
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        if stale:
            self.written.difference_update(stale)
            self._save()
