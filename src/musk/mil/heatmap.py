"""Per-patch attention of trained models: written to h5 beside the features and drawn on the slide thumbnail."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..wsi.h5 import read_patch_file, write_patch_file
from ..wsi.overlay import heatmap_overlay
from .data import finite_features
from .saved import SavedMIL

__all__ = ["attention_map", "draw_attention", "patch_attention", "write_attention_file"]


@torch.no_grad()
def patch_attention(models: Sequence[SavedMIL], features: np.ndarray) -> np.ndarray:
    """Each patch's attention weight (N,), averaged over ``models`` (e.g. the fold models of a run).

    The weights come from the slide aggregator alone, so no report is needed; they sum to one per model.
    """
    weights = []
    for saved in models:
        aggregator = saved.model.aggregator
        if aggregator is None:
            raise ValueError(f"{saved.path} is a text-only model: it has no attention over patches")
        device = next(saved.model.parameters()).device
        was_training = saved.model.training
        saved.model.eval()
        weights.append(aggregator(torch.as_tensor(features, dtype=torch.float32, device=device))[1].cpu().numpy())
        saved.model.train(was_training)
    return np.mean(weights, axis=0)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Percentile ranks in [0, 1] (ties share a rank): attention spans orders of magnitude, ranks show its order."""
    if len(values) < 2:
        return np.ones(len(values))
    _, inverse = np.unique(values, return_inverse=True)
    return inverse / max(inverse.max(), 1)


def write_attention_file(
    path: str | os.PathLike, coords: np.ndarray, attention: np.ndarray, attrs: dict | None = None
) -> Path:
    """An h5 patch file (DESIGN.md section 4) with ``coords``, ``attention`` (weights) and ``attention_rank``."""
    attention = np.asarray(attention, dtype=np.float32)
    return write_patch_file(path, coords, {"attention": attention, "attention_rank": _ranks(attention)}, attrs)


def attention_map(models: Sequence[SavedMIL], features_file: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Attention of ``models`` over one feature file, saved as an attention h5 at ``output`` (the feature file's
    attributes carried over)."""
    patch_file = read_patch_file(features_file, arrays=("features",))
    features = finite_features(features_file, patch_file.features)
    for saved in models:
        trained = saved.config.get("feature_dim")
        if trained is not None and features.shape[1] != trained:
            raise ValueError(
                f"{features_file}: its features are {features.shape[1]}-d but the model in {saved.path} was trained "
                f"on {trained}-d features; use feature files from the encoder it was trained with"
            )
    attention = patch_attention(models, features)
    return write_attention_file(output, patch_file.coords, attention, patch_file.attrs)


def draw_attention(
    thumbnail: Image.Image,
    coords: np.ndarray,
    attention: np.ndarray,
    patch_size_level0: int,
    level0_size: tuple[int, int],
    alpha: float = 0.5,
) -> Image.Image:
    """``thumbnail`` with each patch coloured by its attention rank (blue = lowest, red = highest)."""
    return heatmap_overlay(
        thumbnail,
        coords,
        _ranks(np.asarray(attention)),
        patch_size_level0,
        level0_size,
        alpha=alpha,
        value_range=(0, 1),
    )
