"""The per-slide records of a job (``status/<slide>.json``), the table of them (``status.csv``) and the summary."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..tables import write_csv
from .layout import JobLayout
from .locks import job_files_lock

__all__ = ["STATUS_COLUMNS", "job_summary", "read_record", "write_status_table"]

STATUS_COLUMNS = ("slide", "status", "patches", "seconds", "error")


def read_record(layout: JobLayout, name: str) -> dict:
    """The slide's record with every :data:`STATUS_COLUMNS` key (empty strings for a slide not done yet)."""
    path = layout.slide_file("status", name)
    record = json.loads(path.read_text()) if path.is_file() else {}
    return {k: record.get(k, "") for k in STATUS_COLUMNS} | {"slide": name}


def write_status_table(layout: JobLayout, records: Sequence[dict]) -> None:
    """``status.csv`` from the records (its cells spreadsheet-safe), under the job files' lock."""
    with job_files_lock(layout):
        write_csv(layout.status_csv, STATUS_COLUMNS, records)


def job_summary(records: Sequence[dict], stages: Sequence[str], world: int) -> dict:
    """Counts per status, the patches of the slides done, the failures with their reasons."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    patches = [int(r["patches"]) for r in records if r["status"] == "done" and str(r["patches"]).strip() != ""]
    return {
        "slides": len(records),
        "status": counts,
        "patches": sum(patches),
        "failed": {r["slide"]: r["error"] for r in records if r["status"] == "failed"},
        "stages": list(stages),
        "world_size": world,
    }
