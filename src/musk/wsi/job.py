"""A resumable whole-slide job: segment, patch, extract features and draw zero-shot maps for a list of slides.

The job directory's layout is in :mod:`musk.wsi.layout`. Every output is written to a temporary name and
renamed, so a file under its final name is complete; a slide whose outputs and record exist (and whose outputs
pass a header check) is skipped. Several processes (``accelerate launch``, or independent runs) share one job
directory: each takes its own share of slides first, then helps with the rest, holding a lock per slide
(:mod:`musk.wsi.processes`, :mod:`musk.wsi.locks`). A slide that fails is recorded with the reason and the job
goes on. Everything that can be refused (settings, the job directory, the slide list, settings that differ
from those the job's outputs were made with) is refused before any work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_json
from .config import STAGES, WsiJobConfig, job_slides, stages_through
from .layout import JobLayout, check_job_dir
from .locks import exclusive_lock, job_files_lock
from .model import load_job_model
from .pinning import check_pinned, pin_settings, stage_settings
from .pipeline import SlidePipeline
from .processes import Processes
from .records import job_summary, write_status_table
from .slides import SlideEntry, list_slides

__all__ = ["STAGES", "JobResult", "WsiJobConfig", "exclusive_lock", "heatmap_job", "run_wsi_job"]

logger = logging.getLogger(__name__)

SlideSources = str | os.PathLike | Sequence[str | os.PathLike]


@dataclass
class JobResult:
    """Per-slide records (``slide, status, patches, seconds, error``) and the job summary."""

    records: list[dict]
    summary: dict
    failed: list[str] = field(default_factory=list)


def run_wsi_job(
    slides: SlideSources,
    job_dir: str | os.PathLike,
    config: WsiJobConfig | None = None,
    stages: Sequence[str] = STAGES[:3],
) -> JobResult:
    """Run ``stages`` (of ``segment, patch, extract, heatmap``; earlier ones are implied) on every slide.

    ``slides`` is a folder, a CSV list (``path``, optional ``mpp``) or a list of files. Under ``accelerate
    launch`` each process takes its share. Slides already done are skipped; failures are recorded and the
    job goes on. Returns the records of every slide and the summary written to ``job_dir``.
    """
    config = config or WsiJobConfig()
    stages = stages_through(stages)
    config.validate(stages)
    check_job_dir(job_dir)
    layout = JobLayout(job_dir)
    entries = list_slides(slides)
    processes = Processes.current(cpu=config.device == "cpu")
    check_pinned(layout, stage_settings(config, stages))  # before the model loads: a refusal comes at once
    model = load_job_model(config, stages, processes.device(config.device)) if "extract" in stages else None
    sources = [slides] if isinstance(slides, (str, os.PathLike)) else list(slides)
    with job_files_lock(layout):
        pin_settings(layout, config, stages, model, [str(Path(s).expanduser().resolve()) for s in sources])
    pipeline = SlidePipeline(layout, config, stages, model)
    _run_slides(pipeline, entries, processes)
    processes.wait_for_everyone()
    records = [pipeline.record(e.name, verify=True) for e in entries]
    write_status_table(layout, records)
    summary = job_summary(records, stages, processes.world)
    if processes.rank == 0:
        with job_files_lock(layout):
            write_json(layout.summary, summary)
    return JobResult(records, summary, [r["slide"] for r in records if r["status"] == "failed"])


def _run_slides(pipeline: SlidePipeline, entries: list[SlideEntry], processes: Processes) -> None:
    """Every slide not finished yet that no other process holds, this process's share first."""
    pending = [e for e in processes.work_order(entries) if not pipeline.finished(e.name)]
    processes.wait_for_everyone()
    logger.info("process %d of %d: %d of %d slides to do in %s", processes.rank, processes.world, len(pending),
                len(entries), pipeline.layout.root)  # fmt: skip
    for entry in pending:
        with exclusive_lock(pipeline.layout.slide_lock(entry.name)) as taken:
            if not taken or pipeline.finished(entry.name):  # another process has it, or just finished it
                continue
            record = pipeline.process(entry, processes.rank)
            if record["status"] == "done":
                logger.info("%s: done (%s patches, %.1f s)", entry.name, record["patches"], record["seconds"])
        write_status_table(pipeline.layout, [pipeline.record(e.name) for e in entries])


def heatmap_job(
    job_dir: str | os.PathLike, classes: Sequence[str], slides: SlideSources | None = None, **settings
) -> JobResult:
    """Zero-shot maps of ``classes`` for a job's slides: what ``musk wsi heatmap`` does.

    The geometry, model, weights, feature kind and precision are the job's (``WsiJobConfig.from_job``), so is
    the tokenizer's default (beside the job's local weights, else the hub's); ``settings`` give the others
    (``templates``, ``tokenizer``, ``device``, ``batch_size`` ...). ``slides``: the job's by default.
    """
    config = WsiJobConfig.from_job(job_dir, classes=classes, **settings)
    return run_wsi_job(slides if slides is not None else job_slides(job_dir), job_dir, config, ("heatmap",))
