"""A resumable whole-slide job: segment, patch, extract features and draw zero-shot maps for a list of slides.

Layout of a job directory::

    config.json            resolved settings per stage + versions (a rerun with other settings is refused)
    status.csv             slide, status, patches, seconds, error  (rebuilt from status/ after every slide)
    summary.json           counts per status, patches, world size
    status/<slide>.json    one record per slide, written when it finishes or fails
    thumbnails/ masks/ contours/<slide>.png   segmentation, for checking by eye
    patches/<slide>.h5     coords + attributes                         (DESIGN.md section 4)
    features/<slide>.h5    coords + features (+ zeroshot_probabilities)
    heatmaps/<slide>/NN_<class>.png
    locks/<slide>.lock     held by the process working on the slide
    .job.lock              held while config.json, status.csv or summary.json is written

Every output is written to a temporary name and renamed, so a file under its final name is complete; a slide
whose outputs and record exist is skipped. Several processes (``accelerate launch``, or independent runs) share one
job directory: each takes its own share of slides first, then helps with the rest, holding a lock per slide.
A slide that fails is recorded with the reason and the job goes on.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..files import atomic_path, file_sha256, write_json
from ..loaded import LoadedModel, load
from ..models import DEFAULT_MODEL, PUBLISHED
from ..models.registry import published_source
from ..models.weights import ResolvedWeights, resolve
from ..provenance import provenance
from ..runtime import DTYPES, resolve_device, seed_everything
from ..zeroshot import DEFAULT_TEMPLATES
from .h5 import read_patch_file, write_patch_file
from .patching import PatchGrid, plan_patches
from .readers import SlideReader, open_slide
from .slides import SlideEntry, list_slides
from .tissue import TissueMask, contour_overlay, save_png, segment_tissue

__all__ = ["STAGES", "JobResult", "WsiJobConfig", "run_wsi_job"]

logger = logging.getLogger(__name__)

STAGES = ("segment", "patch", "extract", "heatmap")
STATUS_COLUMNS = ("slide", "status", "patches", "seconds", "error")
JOB_FILES = ("config.json", "status.csv", "summary.json")  # written by any process, under the job lock
#: The settings each stage's outputs depend on (compared with those of an earlier run in the same job directory).
STAGE_SETTINGS = {
    "segment": ("mpp", "thumbnail_size", "min_saturation", "max_saturation", "min_area_um2", "max_hole_um2"),
    "patch": ("patch_size", "magnification", "target_mpp", "overlap", "min_tissue"),
    "extract": ("model", "weights_sha256", "features", "precision"),
}
#: The segmentation and patching settings (what a job's geometry depends on).
JOB_SETTINGS = (*STAGE_SETTINGS["segment"], *STAGE_SETTINGS["patch"])


@dataclass
class WsiJobConfig:
    """Everything a job needs; the defaults are MUSK's pretraining setting (384 px patches at 20x)."""

    mpp: float | None = None  # microns per level-0 pixel for every slide, overriding metadata
    thumbnail_size: int = 2048
    min_saturation: float = 0.08
    max_saturation: float = 0.2
    min_area_um2: float = 20_000.0
    max_hole_um2: float = 5_000.0
    patch_size: int = 384
    magnification: float | None = 20.0
    target_mpp: float | None = None
    overlap: int = 0
    min_tissue: float = 0.5
    model: str = DEFAULT_MODEL
    weights: str | None = PUBLISHED  # None: random initialisation (seeded by seed)
    cache_dir: str | None = None
    features: str = "cls"
    classes: Sequence[str] = ()
    templates: Sequence[str] = DEFAULT_TEMPLATES
    tokenizer: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 32
    num_workers: int = 0
    streams: int | None = None  # concurrent model calls per batch; None: one per CPU thread on CPU
    seed: int = 0
    progress: bool = False

    def validate(self, stages: Sequence[str] = STAGES) -> None:
        """Raise ValueError naming every invalid setting: a job checks them once, before it pins or writes anything."""
        from ..zeroshot import class_prompts
        from .extract import FEATURE_KINDS

        v = asdict(self)
        problems = [
            f"{k} must be at least 1, got {v[k]}" for k in ("thumbnail_size", "patch_size", "batch_size") if v[k] < 1
        ]
        problems += [
            f"{k} must be positive, got {v[k]}"
            for k in ("mpp", "magnification", "target_mpp")
            if v[k] is not None and not v[k] > 0
        ]
        problems += [
            f"{k} must not be negative, got {v[k]}" for k in ("min_area_um2", "max_hole_um2", "num_workers") if v[k] < 0
        ]
        if (self.magnification is None) == (self.target_mpp is None):
            problems.append("give exactly one of magnification (--mag) and target_mpp")
        if not 0 <= self.min_saturation <= self.max_saturation <= 1:
            problems.append(
                f"need 0 <= min_saturation <= max_saturation <= 1, got {self.min_saturation} and {self.max_saturation}"
            )
        if not 0 <= self.overlap < self.patch_size:
            problems.append(f"overlap must be in [0, patch_size), got {self.overlap} for patch_size {self.patch_size}")
        if not 0 <= self.min_tissue <= 1:
            problems.append(f"min_tissue is a fraction in [0, 1], got {self.min_tissue}")
        if self.streams is not None and self.streams < 1:
            problems.append(f"streams must be at least 1, got {self.streams}")
        if self.features not in FEATURE_KINDS:
            problems.append(f"features must be one of {FEATURE_KINDS}, got {self.features!r}")
        if self.precision not in DTYPES:
            problems.append(f"precision must be one of {tuple(DTYPES)}, got {self.precision!r}")
        if "heatmap" in stages:
            try:
                class_prompts(list(self.classes or ()), list(self.templates or ()))
            except ValueError as e:
                problems.append(f"the heatmap stage: {e}")
        if problems:
            raise ValueError("invalid settings: " + "; ".join(problems))


@dataclass
class JobResult:
    """Per-slide records (``slide, status, patches, seconds, error``) and the job summary."""

    records: list[dict]
    summary: dict
    failed: list[str] = field(default_factory=list)


class _Layout:
    def __init__(self, root: Path):
        self.root = root

    def __call__(self, folder: str, name: str, suffix: str) -> Path:
        return self.root / folder / f"{name}{suffix}"


@contextmanager
def exclusive_lock(path: Path, wait: bool = False):
    """Hold an exclusive lock on ``path`` if no other process does (or, with ``wait``, once none does); yields
    whether it was taken.

    POSIX record locks: released by the kernel when the holder exits or is killed, so no stale lock survives.
    """
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


class _Job:
    def __init__(self, job_dir: Path, config: WsiJobConfig, stages: Sequence[str], rank: int, world: int):
        self.dir, self.config, self.stages, self.rank, self.world = job_dir, config, tuple(stages), rank, world
        self.path = _Layout(job_dir)
        self.loaded: LoadedModel | None = None
        self.class_embeddings = None
        self.weights: ResolvedWeights | None = None
        self.weights_sha256 = "random"
        self.tokenizer = None
        self.tokenizer_sha256: str | None = None

    @contextmanager
    def job_files_lock(self):
        """Hold the lock every writer of ``JOB_FILES`` holds, after removing the temporary files a killed
        process left for them (with the lock held, any that exist are stale)."""
        with exclusive_lock(self.dir / ".job.lock", wait=True):
            for name in JOB_FILES:
                for path in self.dir.glob(f".{name}.*.partial{Path(name).suffix}"):
                    logger.info("removing %s, left by an interrupted run", path)
                    path.unlink(missing_ok=True)
            yield

    # ---- configuration -------------------------------------------------------------------
    def settings(self) -> dict[str, dict]:
        values = asdict(self.config)
        values["weights_sha256"] = self.weights_sha256
        needed = {s for s in self.stages if s in STAGE_SETTINGS}
        return {stage: {k: values[k] for k in STAGE_SETTINGS[stage]} for stage in STAGE_SETTINGS if stage in needed}

    def check_and_save_config(self, slides: list[str]) -> None:
        """Refuse settings that differ from those the job directory's existing outputs were made with (call it
        under :meth:`job_files_lock`: it reads, then rewrites config.json)."""
        config_file = self.dir / "config.json"
        settings = self.settings()
        if config_file.is_file():
            saved = json.loads(config_file.read_text())
            earlier, last_run = saved.get("settings", {}), saved.get("config", {})
            for stage, values in settings.items():
                old = earlier.get(stage)
                if old is not None:  # a setting older versions did not pin: the last run's
                    old = {k: last_run[k] for k in values if k in last_run} | old
                changed = {k: (old.get(k), v) for k, v in values.items() if old is not None and old.get(k) != v}
                if changed:
                    detail = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in changed.items())
                    raise ValueError(
                        f"{self.dir} was made with other {stage} settings ({detail}); "
                        "use a new --job_dir or the earlier settings"
                    )
            settings = {**earlier, **settings}
        record = provenance({"stages": list(self.stages), **asdict(self.config)})
        if self.weights is not None:
            record["weights"] = {**self.weights.describe(), "sha256": self.weights_sha256}
        if self.tokenizer is not None:
            record["tokenizer"] = {"path": str(self.tokenizer.model_file), "sha256": self.tokenizer_sha256}
        record["settings"] = settings
        record["slides"] = slides
        write_json(config_file, record)

    # ---- model ---------------------------------------------------------------------------
    def resolve_weights(self) -> None:
        """The weights and their fingerprint, before anything is written (random weights: the model is built)."""
        cfg = self.config
        self.weights = resolve(cfg.weights, published_source(cfg.model), cfg.cache_dir)
        if self.weights.random:
            self.load_model("cpu")
            self.weights_sha256 = self.loaded.weights_sha256
        else:
            self.weights_sha256 = file_sha256(self.weights.path)

    def load_tokenizer(self) -> None:
        """The heatmap stage's tokenizer (the one given, else beside local weights, else the hub's) and its
        file's sha256 (maps made with another one are redone)."""
        from ..tokenizer import find_tokenizer

        self.tokenizer = find_tokenizer(self.config.tokenizer, self.weights, self.config.cache_dir)
        self.tokenizer_sha256 = file_sha256(self.tokenizer.model_file)

    def load_model(self, device) -> None:
        cfg = self.config
        seed_everything(cfg.seed)
        if self.loaded is None or self.loaded.device != resolve_device(device):
            self.loaded = load(cfg.model, self.weights, device, cfg.precision, self.tokenizer, cfg.cache_dir, cfg.seed)
        if "heatmap" in self.stages:
            self.class_embeddings = self.loaded.class_embeddings(list(cfg.classes), list(cfg.templates))

    # ---- one slide -----------------------------------------------------------------------
    def has_heatmaps(self, name: str) -> bool:
        """Whether the slide's maps are of this run's classes, templates and tokenizer (else they are redone)."""
        from .zeroshot_map import has_zeroshot_map

        cfg = self.config
        return has_zeroshot_map(self.path("features", name, ".h5"), cfg.classes, self.dir / "heatmaps" / name,
                                cfg.templates, self.tokenizer_sha256)  # fmt: skip

    def outputs_done(self, name: str) -> bool:
        checks = {
            "segment": lambda: self.path("masks", name, ".png").is_file(),
            "patch": lambda: self.path("patches", name, ".h5").is_file(),
            "extract": lambda: self.path("features", name, ".h5").is_file(),
            "heatmap": lambda: self.has_heatmaps(name),
        }
        return all(checks[stage]() for stage in self.stages)

    def finished(self, name: str) -> bool:
        """Whether the slide's outputs and its record exist (one killed between the two is taken up again, which
        removes its leftovers and writes the record without redoing the outputs)."""
        return self.path("status", name, ".json").is_file() and self.outputs_done(name)

    def remove_partial_files(self, name: str) -> None:
        """Temporary files a killed process left for this slide (safe: the caller holds the slide's lock)."""
        folders = {"thumbnails": ".png", "masks": ".png", "contours": ".png", "patches": ".h5", "features": ".h5",
                   "status": ".json"}  # fmt: skip
        leftovers = [
            p
            for folder, ext in folders.items()
            for p in (self.dir / folder).glob(f".{glob.escape(name)}{ext}.*.partial{ext}")
        ]
        leftovers += (self.dir / "heatmaps" / name).glob(".*.partial*")
        for path in leftovers:
            logger.info("removing %s, left by an interrupted run", path)
            path.unlink(missing_ok=True)

    def process(self, entry: SlideEntry) -> dict:
        start = time.perf_counter()
        self.remove_partial_files(entry.name)
        record = {"slide": entry.name, "status": "done", "patches": "", "seconds": "", "error": ""}
        try:
            with open_slide(entry.path, entry.mpp if entry.mpp is not None else self.config.mpp) as reader:
                patches = self.run_stages(entry, reader)
                record["patches"] = "" if patches is None else patches
        except Exception as e:  # noqa: BLE001 - one bad slide must not stop the job
            logger.error("slide %s failed: %s", entry.path, e)
            record.update(status="failed", error=f"{type(e).__name__}: {e}")
        record["seconds"] = round(time.perf_counter() - start, 3)
        write_json(self.path("status", entry.name, ".json"), {**record, "process": self.rank})
        return record

    def run_stages(self, entry: SlideEntry, reader: SlideReader) -> int | None:
        name, cfg = entry.name, self.config
        thumbnail_file, mask_file = self.path("thumbnails", name, ".png"), self.path("masks", name, ".png")
        if mask_file.is_file():
            tissue = TissueMask.load(mask_file, reader.dimensions)
        else:
            thumbnail = reader.thumbnail(cfg.thumbnail_size)
            settings = {k: getattr(cfg, k) for k in STAGE_SETTINGS["segment"] if k not in ("mpp", "thumbnail_size")}
            tissue = segment_tissue(thumbnail, reader.dimensions, reader.mpp, **settings)
            save_png(thumbnail, thumbnail_file)
            save_png(contour_overlay(thumbnail, tissue.mask), self.path("contours", name, ".png"))
            tissue.save(mask_file)  # last: its presence means the segment stage is complete
        if self.stages == ("segment",):
            return None
        patch_file = self.path("patches", name, ".h5")
        if patch_file.is_file():
            stored = read_patch_file(patch_file)
            grid = PatchGrid.from_attrs(stored.coords, stored.attrs)
        else:
            grid = plan_patches(reader, tissue, patch_size=cfg.patch_size, magnification=cfg.magnification,
                                mpp=cfg.target_mpp, overlap=cfg.overlap, min_tissue=cfg.min_tissue)  # fmt: skip
            write_patch_file(patch_file, grid.coords, attrs=grid.attrs(reader, name))
        features_file = self.path("features", name, ".h5")
        if "extract" in self.stages and not features_file.is_file():
            self.extract(entry, reader, grid, features_file)
        if "heatmap" in self.stages and not self.has_heatmaps(name):
            from PIL import Image

            from .zeroshot_map import add_zeroshot_map

            with Image.open(thumbnail_file) as thumbnail:
                add_zeroshot_map(self.loaded.model, features_file, self.class_embeddings, list(cfg.classes),
                                 thumbnail.convert("RGB"), self.dir / "heatmaps" / name, list(cfg.templates),
                                 self.tokenizer_sha256)  # fmt: skip
        return len(grid.coords)

    def extract(self, entry: SlideEntry, reader: SlideReader, grid: PatchGrid, features_file: Path) -> None:
        from .extract import extract_slide_features

        cfg = self.config
        features = extract_slide_features(self.loaded.model, entry.path, grid, cfg.features, cfg.batch_size,
                                          cfg.num_workers, reader.mpp, cfg.progress, cfg.streams)  # fmt: skip
        attrs = {
            **grid.attrs(reader, entry.name),
            "encoder": cfg.model,
            "weights_sha256": self.weights_sha256,
            "feature_kind": cfg.features,
            "precision": cfg.precision,
            "package_version": __version__,
        }
        write_patch_file(features_file, grid.coords, {"features": features}, attrs)

    # ---- the whole list --------------------------------------------------------------------
    def work_order(self, entries: list[SlideEntry]) -> list[SlideEntry]:
        """This process's share first (every ``world``-th slide from ``rank``), then the others' to help out."""
        mine = entries[self.rank :: self.world]
        return mine + [e for e in entries if e not in mine]

    def write_status(self, entries: list[SlideEntry], verify: bool = False) -> list[dict]:
        """Rebuild ``status.csv`` from the per-slide records; ``verify`` checks each slide's outputs too (slower)."""
        records = []
        for entry in entries:
            status_file = self.path("status", entry.name, ".json")
            record = json.loads(status_file.read_text()) if status_file.is_file() else {}
            record = {k: record.get(k, "") for k in STATUS_COLUMNS} | {"slide": entry.name}
            if verify:
                done = self.outputs_done(entry.name)
                if done and record["status"] != "done":  # finished, then killed before its record was written
                    patches = read_patch_file(self.path("patches", entry.name, ".h5"), arrays=()).coords
                    record.update(status="done", patches=len(patches), error="")
                elif not done and record["status"] != "failed":
                    record.update(status="pending", patches="", seconds="", error="")
            records.append(record | {"status": record["status"] or "pending"})
        with self.job_files_lock(), atomic_path(self.dir / "status.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=STATUS_COLUMNS)
            writer.writeheader()
            writer.writerows(records)
        return records


def _distributed(cpu: bool) -> tuple[int, int, object]:
    """(rank, world size, accelerate state or None) of this process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    return state.process_index, state.num_processes, state


def run_wsi_job(
    slides: str | os.PathLike | Sequence[str | os.PathLike],
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
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {STAGES}")
    last = max(STAGES.index(s) for s in stages)
    stages = STAGES[: last + 1] if last < 3 else (*STAGES[:3], "heatmap")
    config.validate(stages)
    if Path(job_dir).exists() and not Path(job_dir).is_dir():
        raise ValueError(f"the job directory {job_dir} is a file: give a folder (a new one, or a job's)")
    entries = list_slides(slides)
    rank, world, state = _distributed(cpu=config.device == "cpu")
    job = _Job(Path(job_dir), config, stages, rank, world)
    needs_model = "extract" in stages
    if needs_model:
        job.resolve_weights()
    if "heatmap" in stages:
        job.load_tokenizer()
    sources = [slides] if isinstance(slides, (str, os.PathLike)) else list(slides)
    with job.job_files_lock():
        job.check_and_save_config([str(Path(s).expanduser().resolve()) for s in sources])
    pending = [e for e in job.work_order(entries) if not job.finished(e.name)]
    if needs_model and pending:
        job.load_model(state.device if state is not None and config.device == "auto" else resolve_device(config.device))
    if state is not None:
        state.wait_for_everyone()
    logger.info("process %d of %d: %d of %d slides to do in %s", rank, world, len(pending), len(entries), job.dir)
    for entry in pending:
        with exclusive_lock(job.path("locks", entry.name, ".lock")) as taken:
            if not taken or job.finished(entry.name):  # another process has it, or just finished it
                continue
            record = job.process(entry)
            if record["status"] == "done":
                logger.info("%s: done (%s patches, %.1f s)", entry.name, record["patches"], record["seconds"])
        job.write_status(entries)
    if state is not None:
        state.wait_for_everyone()
    records = job.write_status(entries, verify=True)
    summary = _summary(records, stages, world)
    if rank == 0:
        with job.job_files_lock():
            write_json(job.dir / "summary.json", summary)
    return JobResult(records, summary, [r["slide"] for r in records if r["status"] == "failed"])


def _summary(records: list[dict], stages: Sequence[str], world: int) -> dict:
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    patches = [int(r["patches"]) for r in records if r["status"] == "done" and str(r["patches"]).strip() != ""]
    return {
        "slides": len(records),
        "status": counts,
        "patches": int(np.sum(patches)) if patches else 0,
        "failed": {r["slide"]: r["error"] for r in records if r["status"] == "failed"},
        "stages": list(stages),
        "world_size": world,
    }
