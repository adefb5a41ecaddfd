"""Zero-shot tissue maps: per-patch class probabilities from stored features, drawn over the slide thumbnail."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..models import MUSK
from ..zeroshot import probabilities
from .extract import projected
from .h5 import read_patch_file, write_patch_file
from .overlay import add_colour_scale, heatmap_overlay
from .tissue import save_png

__all__ = ["PROBABILITIES", "add_zeroshot_map", "has_zeroshot_map", "heatmap_paths", "patch_probabilities"]

#: The h5 dataset (N, C) of per-patch class probabilities; the attribute ``zeroshot_classes`` names the columns,
#: ``zeroshot_templates`` and ``zeroshot_tokenizer_sha256`` say how the class embeddings were made.
PROBABILITIES = "zeroshot_probabilities"
#: The names :func:`heatmap_paths` gives (the only PNGs a rewrite removes from a slide's folder).
_HEATMAP_NAME = re.compile(r"\d{2,}_[A-Za-z0-9._-]+\.png")


def patch_probabilities(model: MUSK, features: np.ndarray, kind: str, classes: torch.Tensor) -> np.ndarray:
    """(N, C) zero-shot probabilities of patches from their stored ``features`` and (C, D) class embeddings."""
    if len(features) == 0:
        return np.zeros((0, len(classes)), dtype=np.float32)
    return probabilities(model, projected(model, features, kind), classes).numpy().astype(np.float32)


def heatmap_paths(folder: str | os.PathLike, class_names: Sequence[str]) -> list[Path]:
    """One PNG per class in ``folder``, named after the class (characters unsafe in file names become ``_``)."""
    names = [re.sub(r"[^A-Za-z0-9.-]+", "_", c).strip("._") or "class" for c in class_names]
    return [Path(folder) / f"{i:02d}_{n}.png" for i, n in enumerate(names)]


def _prompt_attrs(
    class_names: Sequence[str], templates: Sequence[str] | None, tokenizer_sha256: str | None
) -> dict[str, str | None]:
    """The attributes that say what made a file's probabilities (None: not known)."""
    return {
        "zeroshot_classes": json.dumps(list(class_names)),
        "zeroshot_templates": None if templates is None else json.dumps(list(templates)),
        "zeroshot_tokenizer_sha256": tokenizer_sha256,
    }


def has_zeroshot_map(
    features_file: str | os.PathLike,
    class_names: Sequence[str],
    folder: str | os.PathLike,
    templates: Sequence[str] | None = None,
    tokenizer_sha256: str | None = None,
) -> bool:
    """Whether ``features_file`` holds probabilities for exactly ``class_names`` (and, when given, ``templates``
    and the tokenizer file's ``tokenizer_sha256``) and every heatmap PNG exists."""
    if not Path(features_file).is_file() or not all(p.is_file() for p in heatmap_paths(folder, class_names)):
        return False
    stored = read_patch_file(features_file, arrays=()).attrs
    wanted = _prompt_attrs(class_names, templates, tokenizer_sha256)
    return all(stored.get(k) == v for k, v in wanted.items() if v is not None)


def add_zeroshot_map(
    model: MUSK,
    features_file: str | os.PathLike,
    classes: torch.Tensor,
    class_names: Sequence[str],
    thumbnail: Image.Image,
    folder: str | os.PathLike,
    templates: Sequence[str] | None = None,
    tokenizer_sha256: str | None = None,
) -> np.ndarray:
    """Write per-patch probabilities into ``features_file`` (rewritten atomically) and one heatmap PNG per class
    (the class's probability over the thumbnail, with its colour scale in the lower right corner).

    ``classes`` are the (C, D) class embeddings of ``class_names`` (``musk.class_embeddings``), made with
    ``templates`` and the tokenizer file of ``tokenizer_sha256`` (recorded when given). Heatmaps of other
    classes in ``folder`` (the names :func:`heatmap_paths` gives) are removed. Returns (N, C).
    """
    if len(class_names) != len(classes):
        raise ValueError(f"{len(class_names)} class names for {len(classes)} class embeddings")
    data = read_patch_file(features_file)
    kind = data.attrs.get("feature_kind")
    if kind is None:
        raise ValueError(f"{features_file} has no 'feature_kind' attribute; extract its features again")
    probs = patch_probabilities(model, data.features, str(kind), classes)
    arrays = {**data.arrays, PROBABILITIES: probs}
    attrs = {k: v for k, v in data.attrs.items() if not k.startswith("zeroshot_")}
    write_patch_file(
        features_file, data.coords, arrays, attrs | _prompt_attrs(class_names, templates, tokenizer_sha256)
    )
    level0 = (int(data.attrs["level0_width"]), int(data.attrs["level0_height"]))
    size0 = int(data.attrs["patch_size_level0"])
    paths = heatmap_paths(folder, class_names)
    for stale in Path(folder).glob("*.png"):
        if _HEATMAP_NAME.fullmatch(stale.name) and stale not in paths:
            stale.unlink()
    for column, path in enumerate(paths):
        overlay = heatmap_overlay(thumbnail, data.coords, probs[:, column], size0, level0, value_range=(0.0, 1.0))
        save_png(add_colour_scale(overlay, (0.0, 1.0), label=class_names[column]), path)
    return probs
