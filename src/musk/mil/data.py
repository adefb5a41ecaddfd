"""Bags: the patch features of a case's slides (h5 files, docs/architecture.md "On-disk formats") as one tensor
per case."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..messages import listing
from .features import check_feature_file, read_feature_file
from .manifest import Cohort

__all__ = ["BagDataset", "bag_feature_dim", "feature_moments", "read_bag"]


def bag_feature_dim(cohort: Cohort, features_dir: str | os.PathLike) -> int:
    """The feature width shared by every slide of ``cohort`` (each file checked: :mod:`musk.mil.features`);
    errors name empty cases and odd widths."""
    features_dir = Path(features_dir)
    widths: dict[int, list[str]] = {}
    empty = []
    for case in cohort.cases:
        patches = 0
        for slide in case.slide_ids:
            path = features_dir / f"{slide}.h5"
            shape = check_feature_file(path)
            patches += shape.patches
            widths.setdefault(shape.width, []).append(str(path))
        if patches == 0:
            empty.append(case.case_id)
    if len(widths) > 1:
        summary = "; ".join(f"{d}: {len(p)} files, e.g. {p[0]}" for d, p in sorted(widths.items()))
        raise ValueError(f"the feature files disagree on the feature width ({summary}); use one encoder for all")
    if empty:
        raise ValueError(
            f"{len(empty)} case(s) have no patches in any slide (no tissue found?): {listing(empty, 20)}; "
            "remove them from the manifest"
        )
    return next(iter(widths))


def read_bag(features_dir: str | os.PathLike, slide_ids: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Features of the slides stacked (float32, (N, D)) and each slide's coords, in slide order (each file
    checked before it is read: :func:`musk.mil.features.read_feature_file`)."""
    parts, coords = [], []
    for slide in slide_ids:
        patch_file = read_feature_file(Path(features_dir) / f"{slide}.h5")
        parts.append(patch_file.features)
        coords.append(patch_file.coords)
    return np.concatenate(parts) if len(parts) > 1 else parts[0], coords


class BagDataset(Dataset):
    """Item ``i``: ``{"index", "features" (N, D) or None, "text" (T,) or None, "label" | "time", "event"}``.

    ``features_dir`` None skips the slides (text-only models); ``text`` holds one report embedding per case.
    ``cache`` keeps loaded bags in memory (small cohorts, repeated epochs).
    """

    def __init__(
        self,
        cohort: Cohort,
        features_dir: str | os.PathLike | None,
        text: np.ndarray | None = None,
        cache: bool = False,
    ) -> None:
        if text is not None and len(text) != len(cohort):
            raise ValueError(f"{len(text)} report embeddings for {len(cohort)} cases")
        self.cohort = cohort
        self.features_dir = features_dir
        self.text = None if text is None else torch.as_tensor(np.asarray(text, dtype=np.float32))
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.cohort)

    def _features(self, index: int) -> torch.Tensor | None:
        if self.features_dir is None:
            return None
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        features = torch.from_numpy(read_bag(self.features_dir, self.cohort.cases[index].slide_ids)[0])
        if self.cache is not None:
            self.cache[index] = features
        return features

    def __getitem__(self, index: int) -> dict:
        case = self.cohort.cases[index]
        item = {
            "index": index,
            "features": self._features(index),
            "text": None if self.text is None else self.text[index],
        }
        if self.cohort.task == "classification":
            item["label"] = case.label
        else:
            item["time"], item["event"] = case.time, case.event
        return item


@torch.no_grad()
def feature_moments(dataset: BagDataset, indices, min_scale: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation (D,) over all patches of the cases at ``indices`` (a standard
    deviation under ``min_scale``, a constant feature, counts as 1)."""
    total, squares, count = 0.0, 0.0, 0
    for i in indices:
        x = dataset[int(i)]["features"].double()
        total, squares, count = total + x.sum(0), squares + (x * x).sum(0), count + len(x)
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return mean.float(), torch.where(std > min_scale, std, torch.ones_like(std)).float()


def collate_bags(items: list[dict]) -> list[dict]:
    """Bags differ in length: a batch is the list of items."""
    return items
