"""Per-patch attention of trained models: written to h5 beside the features and drawn on the slide thumbnail.

:func:`draw_heatmaps` is ``musk mil heatmap``: every step from the model folder to the files written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..files import atomic_path, check_file_target, safe_filename
from ..runtime import resolve_device
from ..wsi.h5 import read_patch_file, write_patch_file
from ..wsi.overlay import add_colour_scale, heatmap_overlay
from .features import read_feature_file
from .saved import SavedMIL, load_mil_models

__all__ = ["attention_map", "draw_attention", "draw_heatmaps", "patch_attention", "write_attention_file"]


@torch.no_grad()
def patch_attention(models: Sequence[SavedMIL], features: np.ndarray) -> np.ndarray:
    """Each patch's attention weight (N,), averaged over ``models`` (e.g. the fold models of a run).

    The weights come from the slide aggregator alone, so no report is needed; they sum to one per model.
    """
    weights = []
    for saved in models:
        if saved.model.aggregator is None:
            raise ValueError(f"{saved.path} is a text-only model: it has no attention over patches")
        param = next(saved.model.parameters())
        was_training = saved.model.training
        saved.model.eval()
        x = torch.as_tensor(features, dtype=param.dtype, device=param.device)
        weights.append(saved.model.aggregate(x)[1].float().cpu().numpy())
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
    """An h5 patch file (docs/architecture.md, "On-disk formats") with ``coords``, ``attention`` (weights) and
    ``attention_rank``."""
    attention = np.asarray(attention, dtype=np.float32)
    return write_patch_file(path, coords, {"attention": attention, "attention_rank": _ranks(attention)}, attrs)


def attention_map(models: Sequence[SavedMIL], features_file: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Attention of ``models`` over one feature file, saved as an attention h5 at ``output`` (the feature file's
    attributes carried over)."""
    patch_file = read_feature_file(features_file)
    features = patch_file.features
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


def _output_names(features: Sequence[Path]) -> list[str]:
    """Each feature file's name for its outputs (its stem, made a safe file name); one name twice is refused."""
    names: dict[str, Path] = {}
    for path in features:
        name = safe_filename(path.stem)
        earlier = names.setdefault(name, path)
        if earlier != path:
            raise ValueError(
                f"{earlier} and {path} share the name {name!r}, so their heatmaps would overwrite each other in one "
                "--output_dir: run them separately with different output folders"
            )
    return list(names)


def _draw_on_slide(attention_file: Path, slide_file: Path, output: Path, thumbnail_size: int) -> Path:
    """The attention of ``attention_file`` drawn on the thumbnail of ``slide_file``, with its colour scale, saved
    as a PNG at ``output``."""
    from ..wsi.readers import open_slide

    attention = read_patch_file(attention_file, arrays=("attention",))
    size = int(attention.attrs.get("patch_size_level0", attention.attrs.get("patch_size", 0)))
    if size <= 0:
        raise ValueError(f"{attention_file} has no patch_size_level0 attribute: cannot place its patches")
    with open_slide(slide_file) as slide:
        thumbnail, dimensions = slide.thumbnail(thumbnail_size), slide.dimensions
    image = draw_attention(thumbnail, attention.coords, attention.arrays["attention"], size, dimensions)
    image = add_colour_scale(image, (0.0, 1.0), label="attention rank")
    with atomic_path(output) as tmp:
        image.save(tmp, format="PNG")
    return output


def draw_heatmaps(
    model_dir: str | os.PathLike,
    features: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    slides: Sequence[str | os.PathLike] | None = None,
    thumbnail_size: int = 2048,
    device: str | torch.device | None = "auto",
    precision: str = "fp32",
) -> list[Path]:
    """Attention of the model(s) in ``model_dir`` over each feature file: ``<name>_attention.h5`` in
    ``output_dir`` and, with ``slides`` (one per feature file, in the same order), ``<name>_attention.png`` drawn
    on the slide's thumbnail (longest side ``thumbnail_size``). Returns the files written. Everything that can be
    checked (counts, names, the output folder) is checked before the models load."""
    features = [Path(f) for f in features]
    slides = [Path(s) for s in slides or ()]
    if slides and len(slides) != len(features):
        raise ValueError(f"{len(slides)} slides for {len(features)} feature files: give one slide per file")
    names = _output_names(features)
    output_dir = Path(output_dir)
    check_file_target(output_dir / f"{names[0]}_attention.h5", "--output_dir")
    models = load_mil_models(model_dir, resolve_device(device), precision)
    written = []
    for i, (name, features_file) in enumerate(zip(names, features, strict=True)):
        attention_file = attention_map(models, features_file, output_dir / f"{name}_attention.h5")
        written.append(attention_file)
        if slides:
            written.append(
                _draw_on_slide(attention_file, slides[i], output_dir / f"{name}_attention.png", thumbnail_size)
            )
    return written
