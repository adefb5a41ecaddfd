"""Slide representations from a trained ``musk mil`` model, for case retrieval.

A MIL model's aggregator pools a slide's patch features (the raw ``cls``/``ms`` features it was trained on, read
again from each slide's h5 file) into one vector. With several fold models, each fold's vector is normalised and
the vectors are joined, so the cosine of two slides is the mean of their per-fold cosines. The vectors are kept
in the index folder (``mil-<model hash>.npz``), computed once per slide.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_path, file_sha256
from .inputs import read_chunks
from .records import SearchError, SlideRecord

__all__ = ["mil_slide_embeddings"]

logger = logging.getLogger(__name__)


def _model_hash(models) -> str:
    from ..mil.saved import WEIGHTS_FILENAME

    digest = hashlib.sha256()
    for saved in models:
        digest.update(file_sha256(saved.path / WEIGHTS_FILENAME).encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def _represent(models, record: SlideRecord) -> np.ndarray:
    path = Path(record.features or "")
    if not path.is_file():
        raise SearchError(f"slide {record.name}: its feature file {path} is gone; the MIL model needs the raw features")
    stat = path.stat()
    if record.source and record.source != {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}:
        raise SearchError(f"slide {record.name}: {path} changed since it was indexed; run `musk index add` on it")
    features = np.concatenate([chunk for _, chunk in read_chunks(path)])
    parts = []
    for saved in models:
        if features.shape[1] != saved.config["feature_dim"]:
            raise SearchError(
                f"{saved.path} reads {saved.config['feature_dim']}-d features; slide {record.name} has "
                f"{features.shape[1]}-d {record.feature_kind} features"
            )
        device = next(saved.model.parameters()).device
        pooled, _ = saved.model.aggregate(torch.from_numpy(features).to(device))  # standardised as in training
        pooled = pooled.float().cpu().numpy().astype(np.float64)
        parts.append(pooled / max(np.linalg.norm(pooled), 1e-12))
    return np.concatenate(parts) / np.sqrt(len(parts))


def mil_slide_embeddings(index, model_dir: str | os.PathLike, device: str = "cpu") -> dict[int, np.ndarray]:
    """Slide key -> the MIL model's representation of that slide (see the module docstring)."""
    from ..mil.saved import load_mil_models

    models = load_mil_models(model_dir, device)
    if any(saved.model.aggregator is None for saved in models):
        raise SearchError(f"{model_dir} is a text-only MIL model: it has no slide representation")
    cache = index.directory / f"mil-{_model_hash(models)}.npz"
    known: dict[int, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache) as saved:
            known = dict(zip(saved["keys"].tolist(), saved["vectors"], strict=True))
    missing = [r for r in index.slides() if r.patches and r.key not in known]
    for record in missing:
        known[record.key] = _represent(models, record)
    if missing:
        try:
            with atomic_path(cache) as tmp, open(tmp, "wb") as f:
                np.savez(f, keys=np.array(list(known), dtype=np.int64), vectors=np.stack(list(known.values())))
        except OSError as e:
            logger.warning("could not keep the MIL slide vectors in %s: %s", cache, e)
    return known
