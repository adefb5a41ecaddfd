"""What a dataset loader returns: images (files or arrays), labels or captions, class names and prompts."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..images import ImageLoadError, load_image

#: The four prompt templates of the upstream benchmark; ``{c}`` is replaced by the class name.
UPSTREAM_TEMPLATES = (
    "a histopathology slide showing {c}",
    "histopathology image of {c}",
    "pathology tissue showing {c}",
    "presence of {c} tissue on image",
)


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder that lacks an expected file, or holds one that cannot be parsed; the message names both."""


class ImageSource:
    """Random access to a dataset's images as RGB PIL images, with a stable key per item."""

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def key(self, index: int) -> str:
        """A name for the item (a relative path, or ``file[index]``), used in messages and the cache key."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A hash of every item's key: it changes when files are added, removed or renamed."""
        digest = hashlib.sha256()
        for i in range(len(self)):
            digest.update(self.key(i).encode() + b"\0")
        return digest.hexdigest()[:16]


class FileImages(ImageSource):
    """Image files, optionally passed through ``prepare`` (e.g. a crop) after loading."""

    def __init__(
        self, paths: Sequence[str | Path], root: str | Path, prepare: Callable[[Image.Image], Image.Image] | None = None
    ):
        self.paths = [Path(p) for p in paths]
        self.root = Path(root)
        self.prepare = prepare

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        image = load_image(self.paths[index])
        return self.prepare(image) if self.prepare else image

    def key(self, index: int) -> str:
        path = self.paths[index]
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)


class ArrayImages(ImageSource):
    """Images in an array-like of shape (N, H, W, 3): numpy, memory-mapped .npy, or an h5py dataset.

    ``open_array`` (instead of ``array``) opens the array on first use in each process, for handles such as
    h5py's that do not survive being sent to DataLoader workers.
    """

    def __init__(self, array=None, name: str = "array", root: str | Path = "", open_array: Callable | None = None):
        if (array is None) == (open_array is None):
            raise ValueError("give either array or open_array")
        self._array = array
        self._open = open_array
        self.name = name
        self.root = Path(root)
        self._length = len(array if array is not None else open_array())

    def __len__(self) -> int:
        return self._length

    def _data(self):
        if self._array is None:
            self._array = self._open()
        return self._array

    def load(self, index: int) -> Image.Image:
        pixels = np.asarray(self._data()[index])
        if pixels.dtype != np.uint8:
            pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        return Image.fromarray(pixels).convert("RGB")

    def key(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.name}:{len(self)}".encode()).hexdigest()[:16]

    def __getstate__(self):
        state = dict(self.__dict__)
        if self._open is not None:
            state["_array"] = None
        return state


@dataclass
class BenchData:
    """One split of one dataset.

    Classification data has ``labels`` (one int per image) and ``classes`` (the names used in prompts).
    Caption data has ``captions`` and ``caption_images``: the image index of each caption (an image may have
    several captions, and the same caption text may occur for several images).
    """

    name: str
    split: str
    images: ImageSource
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    templates: list[str] = field(default_factory=lambda: list(UPSTREAM_TEMPLATES))
    captions: list[str] | None = None
    caption_images: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.images) == 0:
            raise DatasetLayoutError(f"{self.name} ({self.split}): the dataset has no images")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if len(self.labels) != len(self.images):
                raise ValueError(f"{self.name}: {len(self.labels)} labels for {len(self.images)} images")
        if self.captions is not None:
            self.caption_images = np.asarray(self.caption_images, dtype=np.int64)
            if len(self.caption_images) != len(self.captions):
                raise ValueError(f"{self.name}: {len(self.captions)} captions but {len(self.caption_images)} links")


class TransformedImages(torch.utils.data.Dataset):
    """An :class:`ImageSource` through a model transform: items ``(tensor or None, index, error)``."""

    def __init__(self, images: ImageSource, transform: Callable[[Image.Image], torch.Tensor]):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        try:
            return self.transform(self.images.load(index)), index, None
        except (ImageLoadError, OSError) as exc:
            return None, index, f"{self.images.key(index)}: {exc}"
