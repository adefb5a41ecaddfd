"""The patches of one slide as a torch Dataset: DataLoader workers read, resize and normalise them.

Each worker process opens the slide itself (slide handles are not shared across processes). Preprocessing is
the model's own (``musk.get_transform``) after the patch is resized to ``patch_size``; when the patch size
equals the model's input size and the crop keeps the whole image, the equivalent direct path (to tensor and
normalise, no resampling) is taken.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..transforms import get_transform, resolve_data_config
from .patching import PatchGrid
from .readers import SlideReader, open_slide

__all__ = ["SlidePatchDataset", "patch_transform"]


def patch_transform(model_or_cfg, patch_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Preprocessing of ``patch_size`` RGB patches for a model, identical in result to ``get_transform``."""
    cfg = resolve_data_config(model_or_cfg)
    _, height, width = cfg["input_size"]
    if height == width == patch_size and math.floor(patch_size / cfg["crop_pct"]) == patch_size:
        mean = torch.tensor(cfg["mean"]).view(-1, 1, 1)
        std = torch.tensor(cfg["std"]).view(-1, 1, 1)
        return lambda image: _normalised(image, mean, std)
    return get_transform(model_or_cfg)


def _normalised(image: Image.Image, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return (pixels.float().div_(255) - mean).div_(std)


class SlidePatchDataset(Dataset):
    """Item ``i``: the preprocessed patch at ``grid.coords[i]`` as a (C, H, W) float tensor."""

    def __init__(
        self,
        slide: str | os.PathLike,
        grid: PatchGrid,
        transform: Callable[[Image.Image], torch.Tensor],
        mpp: float | None = None,
    ):
        self.slide = Path(slide)
        self.grid = grid
        self.transform = transform
        self.mpp = mpp
        self._reader: SlideReader | None = None
        self._reader_pid: int | None = None

    def __len__(self) -> int:
        return len(self.grid.coords)

    def read_patch(self, index: int) -> Image.Image:
        """The RGB patch ``index`` at ``patch_size``, before normalisation."""
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader, self._reader_pid = open_slide(self.slide, self.mpp), os.getpid()
        x, y = self.grid.coords[index]
        side = self.grid.read_size
        patch = self._reader.read_region((int(x), int(y)), self.grid.level, (side, side))
        if side != self.grid.patch_size:
            patch = patch.resize((self.grid.patch_size,) * 2, Image.Resampling.BICUBIC, reducing_gap=None)
        return patch

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.read_patch(index))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reader"] = state["_reader_pid"] = None  # each worker opens its own
        return state

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
