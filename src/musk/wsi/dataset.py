"""The patches of one slide as a torch Dataset: DataLoader workers read and resize them, the device normalises.

Each worker process opens the slide itself (OpenSlide handles are not shared across processes), except a plain
image given as an open reader: its pixels, decoded once, are shared with the workers. A worker returns
8-bit pixels, already resized and cropped exactly as ``musk.get_transform`` would; ``PatchPreprocessing.normalise``
turns a batch of them into the model's input on the model's device. Together they give ``get_transform``'s
result bit for bit, while moving a quarter of the bytes between processes (uint8 instead of float32).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from ..transforms import get_transform, resolve_data_config
from .patching import PatchGrid
from .readers import SlideReader, open_slide

__all__ = ["PatchPreprocessing", "SlidePatchDataset"]


class PatchPreprocessing:
    """``musk.get_transform`` split in two: the PIL geometry (in workers) and the normalisation (on the device)."""

    def __init__(self, model_or_cfg):
        cfg = resolve_data_config(model_or_cfg)
        steps = get_transform(model_or_cfg).transforms
        self.geometry = [t for t in steps if not isinstance(t, (T.ToTensor, T.Normalize))]
        if len(self.geometry) != len(steps) - 2:
            raise ValueError("expected get_transform to end with ToTensor and Normalize")
        _, height, width = cfg["input_size"]
        unchanged = math.floor(height / cfg["crop_pct"]) == height and math.floor(width / cfg["crop_pct"]) == width
        self.unchanged_size = (width, height) if unchanged else None  # an image of this size needs no resampling
        self.mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
        self.std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """RGB patch -> (C, H, W) uint8 at the model's input size."""
        if image.size != self.unchanged_size:
            for step in self.geometry:
                image = step(image)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 -> float32 model input on ``batch``'s device (as ToTensor then Normalize)."""
        x = batch.float().div_(255)
        return x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """One patch all the way: equal to ``get_transform(model)(image)``."""
        return self.normalise(self.pixels(image)[None])[0]


class SlidePatchDataset(Dataset):
    """Item ``i``: the patch at ``grid.coords[i]``, resized for the model, as (C, H, W) uint8 pixels.

    ``slide``: a slide file, or an open :class:`~musk.wsi.readers.SlideReader` (the caller closes it), used in this
    process and, when it allows (``shared_with_workers``: a decoded plain image), in the workers too.
    """

    def __init__(
        self,
        slide: str | os.PathLike | SlideReader,
        grid: PatchGrid,
        preprocessing: PatchPreprocessing,
        mpp: float | None = None,
    ):
        self._given = slide if isinstance(slide, SlideReader) else None
        self._given_pid = os.getpid()
        self.slide = self._given.path if self._given is not None else Path(slide)
        self.grid = grid
        self.preprocessing = preprocessing
        self.mpp = mpp
        self._reader: SlideReader | None = None
        self._reader_pid: int | None = None

    def __len__(self) -> int:
        return len(self.grid.coords)

    def _reader_here(self) -> SlideReader:
        """The reader of this process: the one given when it may be used here, else one opened for it."""
        if self._reader is None or self._reader_pid != os.getpid():
            given = self._given
            if given is not None and (given.shared_with_workers or self._given_pid == os.getpid()):
                self._reader = given
            else:
                self._reader = open_slide(self.slide, self.mpp)
            self._reader_pid = os.getpid()
        return self._reader

    def read_patch(self, index: int) -> Image.Image:
        """The RGB patch ``index`` at ``patch_size``, before normalisation."""
        x, y = self.grid.coords[index]
        side = self.grid.read_size
        patch = self._reader_here().read_region((int(x), int(y)), self.grid.level, (side, side))
        if side != self.grid.patch_size:
            patch = patch.resize((self.grid.patch_size,) * 2, Image.Resampling.BICUBIC, reducing_gap=None)
        return patch

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.preprocessing.pixels(self.read_patch(index))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reader"] = state["_reader_pid"] = None  # each worker opens its own
        if self._given is not None and not self._given.shared_with_workers:
            state["_given"] = None  # an OpenSlide handle does not cross processes
        return state

    def close(self) -> None:
        """Close the reader this dataset opened (not one it was given)."""
        if self._reader is not None and self._reader is not self._given:
            self._reader.close()
        self._reader = None
