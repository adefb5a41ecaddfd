"""Turning a manifest, a feature folder and (optionally) reports into the cases a model reads."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..messages import listing
from ..models import DEFAULT_MODEL, PUBLISHED
from ..models.weights import weights_option
from .data import BagDataset, bag_feature_dim
from .manifest import Cohort, ManifestError, load_manifest, read_reports_dir
from .models import FUSIONS
from .reports import embed_reports, load_report_embeddings

__all__ = ["MILInputs", "TextEncoderSpec", "load_inputs", "text_weights_option"]

logger = logging.getLogger(__name__)


def text_weights_option(value: str | None) -> str | None:
    """A ``--text_weights`` value as :func:`musk.load` takes it (``none`` -> None: random weights); see
    :func:`musk.models.weights.weights_option`."""
    try:
        return weights_option(value)
    except ValueError as e:
        raise ValueError(str(e).replace("--weights", "--text_weights")) from None


@dataclass
class TextEncoderSpec:
    """The MUSK text encoder that embeds reports: ``weights`` as :func:`musk.load` takes them (``published``,
    a hub id or a local file; ``none`` or None = random, seeded the same every time: tests only)."""

    model: str = DEFAULT_MODEL
    weights: str | None = PUBLISHED
    tokenizer: str | None = None
    cache_dir: str | None = None
    max_tokens: int = 100
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.weights = text_weights_option(self.weights)


@dataclass
class MILInputs:
    cohort: Cohort
    dataset: BagDataset
    feature_dim: int | None
    text_dim: int | None


def _report_embeddings(cohort: Cohort, encoder: TextEncoderSpec) -> np.ndarray:
    from ..loaded import load

    absent = [c.case_id for c in cohort.cases if not c.report]
    if absent:
        raise ManifestError(
            f"{cohort.source}: {len(absent)} case(s) have no report text: {listing(absent, 20)}; add a 'report' "
            "column, pass --reports DIR with <case_id>.txt files, or train without fusion (--fusion none)"
        )
    if encoder.weights is None:
        logger.warning("embedding reports with a randomly initialised text encoder (no weights given)")
    with torch.random.fork_rng(devices=[]):  # random weights: the same every time, so predictions match training
        text_model = load(
            encoder.model, encoder.weights, encoder.device, tokenizer=encoder.tokenizer, cache_dir=encoder.cache_dir
        )
    logger.info("embedding %d reports with %s", len(cohort), encoder.model)
    return embed_reports([c.report for c in cohort.cases], text_model.model, text_model.tokenizer, encoder.max_tokens)


def load_inputs(
    manifest: str | os.PathLike,
    task: str,
    features_dir: str | os.PathLike | None,
    fusion: str = "none",
    reports: str | os.PathLike | None = None,
    report_embeddings: str | os.PathLike | None = None,
    text_encoder: TextEncoderSpec | None = None,
    classes: list[str] | None = None,
    cache_bags: bool = False,
    targets: bool = True,
) -> MILInputs:
    """Read and check everything a run needs; reports are embedded only when the fusion uses them.

    Report vectors come from ``report_embeddings`` (an ``.npz`` with ``case_ids`` and ``embeddings``) when
    given, else from the reports (manifest ``report`` column or ``reports`` folder) through ``text_encoder``.
    ``targets`` False: labels or outcomes are not needed (prediction).
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    uses_slides = fusion != "text_only"
    if uses_slides and features_dir is None:
        raise ValueError(f"fusion {fusion!r} reads slide features: give features_dir")
    cohort = load_manifest(manifest, task, features_dir if uses_slides else None, classes, targets)
    feature_dim = bag_feature_dim(cohort, features_dir) if uses_slides else None
    text = None
    if fusion != "none":
        if report_embeddings is not None:
            text = load_report_embeddings(report_embeddings, cohort.case_ids)
        else:
            if reports is not None:
                read_reports_dir(cohort, reports)
            text = _report_embeddings(cohort, text_encoder or TextEncoderSpec())
    dataset = BagDataset(cohort, Path(features_dir) if uses_slides else None, text, cache=cache_bags)
    return MILInputs(cohort, dataset, feature_dim, None if text is None else int(text.shape[1]))
