"""Where a job's files are, and whether a folder may hold a job.

Layout of a job directory (the formats: ``docs/architecture.md``, section "On-disk formats")::

    config.json            resolved settings per stage + versions (a rerun with other settings is refused)
    status.csv             slide, status, patches, seconds, error  (rebuilt from status/ after every slide)
    summary.json           counts per status, patches, world size
    status/<slide>.json    one record per slide, written when it finishes or fails
    thumbnails/ masks/ contours/<slide>.png   segmentation, for checking by eye
    patches/<slide>.h5     coords + attributes
    features/<slide>.h5    coords + features (+ zeroshot_probabilities)
    heatmaps/<slide>/NN_<class>.png
    locks/<slide>.lock     held by the process working on the slide
    .job.lock              held while config.json, status.csv or summary.json is written

``<slide>`` is the slide's name made safe as a file name (:func:`musk.files.safe_filename`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..files import check_writable_folder
from ..messages import listing

__all__ = [
    "JOB_FILES",
    "JOB_FOLDERS",
    "SLIDE_FILES",
    "JobLayout",
    "check_job_dir",
    "read_job_record",
    "saved_job_record",
]

#: The files of the whole job, written by any process under the job lock.
JOB_FILES = ("config.json", "status.csv", "summary.json")
#: The folders of a slide's files and their suffix.
SLIDE_FILES = {"thumbnails": ".png", "masks": ".png", "contours": ".png", "patches": ".h5", "features": ".h5",
               "status": ".json"}  # fmt: skip
#: Every folder of a job directory.
JOB_FOLDERS = (*SLIDE_FILES, "heatmaps", "locks")


class JobLayout:
    """The paths of a job directory's files."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def slide_file(self, folder: str, name: str) -> Path:
        """``<folder>/<name><suffix>``: one of the :data:`SLIDE_FILES` of the slide ``name``."""
        return self.root / folder / f"{name}{SLIDE_FILES[folder]}"

    def heatmaps(self, name: str) -> Path:
        return self.root / "heatmaps" / name

    def slide_lock(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def status_csv(self) -> Path:
        return self.root / "status.csv"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def job_lock(self) -> Path:
        return self.root / ".job.lock"


def _visible(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def saved_job_record(job_dir: str | os.PathLike) -> dict | None:
    """The job's parsed ``config.json``; None when there is none; ``ValueError`` when it is not a job's."""
    config = Path(job_dir) / "config.json"
    if not config.is_file():
        return None
    try:
        record = json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict) or "settings" not in record:
        raise ValueError(
            f"{config} is not the config.json of a musk wsi job; give a new or empty --job_dir, or a job's"
        )
    return record


def read_job_record(job_dir: str | os.PathLike) -> dict:
    """The saved ``config.json`` of the job in ``job_dir`` (settings, slides, versions, weights)."""
    record = saved_job_record(Path(job_dir))
    if record is None:
        raise FileNotFoundError(f"{job_dir} holds no job (no config.json): run `musk wsi extract` first")
    return record


def check_job_dir(job_dir: str | os.PathLike) -> None:
    """``ValueError`` unless a job may be written in ``job_dir``, before any work: it is a folder (or can be made
    one), new files can be written there, and it holds a job of ours (its ``config.json``) or nothing visible
    (hidden files, and the job's own folders with nothing visible in them, are allowed). A folder of other files
    is refused, so nothing of the user's is overwritten."""
    job_dir = Path(job_dir)
    if job_dir.exists() and not job_dir.is_dir():
        raise ValueError(f"the job directory {job_dir} is a file: give a folder (a new one, or a job's)")
    blocker = next((p for p in job_dir.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"the job directory {job_dir} cannot be created: {blocker} is a file, not a folder")
    existing = job_dir if job_dir.exists() else next(p for p in job_dir.absolute().parents if p.exists())
    check_writable_folder(existing, f"the job directory {job_dir}")
    if existing != job_dir or saved_job_record(job_dir) is not None:
        return
    visible = sorted(
        p.name for p in _visible(job_dir) if not (p.name in JOB_FOLDERS and p.is_dir() and not _visible(p))
    )
    if visible:
        raise ValueError(
            f"the job directory {job_dir} holds other files ({listing(visible, 3)}) and no musk wsi job (no "
            "config.json of ours); give a new or empty folder"
        )
