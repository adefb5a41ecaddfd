"""The settings of a whole-slide job: :class:`WsiJobConfig`, its checks, and which settings each stage pins.

A job's settings come from Python (``WsiJobConfig(...)``), from the command line, or from a job directory's
saved ``config.json`` (:meth:`WsiJobConfig.from_job`); the last two go through :func:`musk.settings.build`, so
a wrong type or an unknown key is an error naming the key and where it came from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..images import DEFAULT_MAX_PIXELS
from ..models import DEFAULT_MODEL, PUBLISHED
from ..runtime import PRECISIONS
from ..settings import build
from ..zeroshot import DEFAULT_TEMPLATES
from .layout import read_job_record

__all__ = ["FROM_JOB", "JOB_SETTINGS", "STAGES", "STAGE_SETTINGS", "WsiJobConfig", "job_slides", "stages_through"]

STAGES = ("segment", "patch", "extract", "heatmap")
#: The settings each stage's outputs depend on (compared with those of an earlier run in the same job directory).
STAGE_SETTINGS = {
    "segment": ("mpp", "thumbnail_size", "min_saturation", "max_saturation", "min_area_um2", "max_hole_um2"),
    "patch": ("patch_size", "magnification", "target_mpp", "overlap", "min_tissue"),
    "extract": ("model", "weights_sha256", "features", "precision"),
}
#: The segmentation and patching settings (what a job's geometry depends on).
JOB_SETTINGS = (*STAGE_SETTINGS["segment"], *STAGE_SETTINGS["patch"])
#: What :meth:`WsiJobConfig.from_job` takes from a job: its geometry, model, weights, feature kind and precision.
FROM_JOB = (*JOB_SETTINGS, "model", "weights", "cache_dir", "features", "precision")


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
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # largest plain-image slide (PNG, JPEG ...) decoded; None: no limit
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

    @classmethod
    def from_job(cls, job_dir: str | os.PathLike, **overrides) -> WsiJobConfig:
        """The settings of the job in ``job_dir``: its geometry, model, weights, feature kind and precision
        (:data:`FROM_JOB`) from its ``config.json``, the others (classes, templates, tokenizer, device, batch
        size ...) from ``overrides`` or the defaults. What ``musk wsi heatmap`` runs with."""
        record = read_job_record(job_dir)
        saved = record["config"]
        source = f"{os.fspath(job_dir)}/config.json"
        from_file = build(cls, {k: saved[k] for k in FROM_JOB if k in saved}, source=source)
        values = {k: getattr(from_file, k) for k in FROM_JOB}
        return build(cls, {**values, **overrides}, source="the settings given")

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
            for k in ("mpp", "magnification", "target_mpp", "max_pixels")
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
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if "heatmap" in stages:
            try:
                class_prompts(list(self.classes or ()), list(self.templates or ()))
            except ValueError as e:
                problems.append(f"the heatmap stage: {e}")
        if problems:
            raise ValueError("invalid settings: " + "; ".join(problems))


def stages_through(stages: Sequence[str]) -> tuple[str, ...]:
    """The stages a request runs: every stage up to the last one asked for (the earlier ones are implied)."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {STAGES}")
    return STAGES[: max(STAGES.index(s) for s in stages) + 1]


def job_slides(job_dir: str | os.PathLike) -> list[str]:
    """The slide sources (folders, CSV lists, files) the job in ``job_dir`` was last run on."""
    return list(read_job_record(job_dir).get("slides") or [])
