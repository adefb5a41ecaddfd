"""MUSK features of every patch of a slide.

Kinds: ``cls`` (the image CLS token, no head, not normalised: the TRIDENT convention, D = 1024 for the
published model), ``ms`` (CLS at scales 1 and 2 joined, 2D: upstream's advice for MIL) and ``proj`` (through
the vision head and L2-normalised, the space zero-shot classification works in).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..models import MUSK
from ..streams import run_in_streams
from .dataset import PatchPreprocessing, SlidePatchDataset
from .patching import PatchGrid
from .readers import SlideReader, open_slide

__all__ = ["FEATURE_KINDS", "encode_patches", "extract_slide_features", "feature_width", "projected"]

logger = logging.getLogger(__name__)

FEATURE_KINDS = ("cls", "ms", "proj")


def feature_width(model: MUSK, kind: str) -> int:
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; choose one of {FEATURE_KINDS}")
    return 2 * model.embed_dim if kind == "ms" else model.embed_dim


def encode_patches(model: MUSK, images: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, C, H, W) preprocessed patches -> (B, D) features of ``kind``."""
    if kind == "cls":
        return model.encode_image(images, with_head=False, normalize=False)
    if kind == "ms":
        return model.encode_image(images, with_head=False, normalize=False, ms_aug=True)
    if kind == "proj":
        return model.encode_image(images, with_head=True, normalize=True)
    raise ValueError(f"unknown feature kind {kind!r}; choose one of {FEATURE_KINDS}")


@torch.inference_mode()
def projected(model: MUSK, features: np.ndarray, kind: str) -> torch.Tensor:
    """Stored features of any kind -> the normalised projections zero-shot classification needs.

    ``cls`` and ``ms`` go through the vision head (``ms`` by its scale-1 half, as ``encode_image`` does with
    ``ms_aug`` and a head), so no patch is encoded twice.
    """
    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    if kind == "proj":
        return x
    head = model.vision_head
    x = x[:, : head.in_features].to(head.weight.device, head.weight.dtype)
    return F.normalize(head(x), dim=-1).float().cpu()


@torch.inference_mode()
def extract_slide_features(
    model: MUSK,
    slide: str | os.PathLike | SlideReader,
    grid: PatchGrid,
    kind: str = "cls",
    batch_size: int = 32,
    num_workers: int = 0,
    mpp: float | None = None,
    progress: bool = False,
    streams: int | None = None,
) -> np.ndarray:
    """(N, D) float32 features of the patches of ``grid``.

    ``slide``: a slide file (``mpp`` overriding its metadata) or an open reader. It is opened once, here, and
    the ``num_workers`` loader processes share it where they can: a plain image's decoded pixels are mapped by
    every worker, not decoded again in each. The progress bar counts patches. Each batch runs as ``streams``
    concurrent calls (default: one per CPU thread on CPU, see :mod:`musk.streams`).
    """
    width = feature_width(model, kind)
    if len(grid.coords) == 0:
        return np.zeros((0, width), dtype=np.float32)
    if not isinstance(slide, SlideReader):
        with open_slide(slide, mpp) as reader:
            return extract_slide_features(model, reader, grid, kind, batch_size, num_workers, None, progress, streams)
    preprocessing = PatchPreprocessing(model)
    dataset = SlidePatchDataset(slide, grid, preprocessing)
    param = next(model.parameters())
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=param.device.type == "cuda",
        persistent_workers=False,
    )
    out = np.empty((len(dataset), width), dtype=np.float32)
    done = 0
    bar = tqdm(total=len(dataset), desc=f"features {dataset.slide.name}", unit="patch", disable=not progress)
    try:
        for pixels in loader:
            # the inference precision rule (musk.runtime): the inputs are cast to the weights' dtype
            images = preprocessing.normalise(pixels.to(param.device, non_blocking=True)).to(param.dtype)
            feats = run_in_streams(lambda part: encode_patches(model, part, kind), images, streams)
            out[done : done + len(feats)] = feats.float().cpu().numpy()
            done += len(feats)
            bar.update(len(feats))
    finally:
        bar.close()
        dataset.close()
    return out
