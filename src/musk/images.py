"""Robust image loading: any common file -> 8-bit RGB PIL image, and a dataset that survives bad files.

Conversions made by :func:`load_image`:

- EXIF orientation is applied.
- Transparency (RGBA, LA, PA, palette or grey/RGB with a transparent colour) is composited onto white, the
  colour of the empty glass around tissue.
- 16-bit integers (``I;16``, ``I;16B``, ``I;16L``, and ``I`` whose values lie in 0..65535) are scaled to
  8 bits with rounding (``round(v * 255 / 65535)``), never clipped. Other ``I`` images and float (``F``)
  images: values in [0, 1] are multiplied by 255, values in [0, 255] are kept, anything else is rescaled
  from its min..max to 0..255; non-finite values become 0.
- Grey, 1-bit, palette, CMYK, YCbCr, LAB, HSV go through Pillow's conversion to RGB.
- A multi-page TIFF (including Aperio .svs) gives its largest page, the first one on a tie.

Pillow's decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``, a warning above ~89 M pixels and an
error above twice that) is replaced by this module's own limit, ``max_pixels``: while a file is being
decoded the global is set to ``None`` and it is restored as soon as no load of this module is running
(a counter under a lock, so concurrent loads in threads are safe and the previous value always comes
back). Larger images raise :class:`ImageLoadError`; whole-slide images belong to ``musk.wsi``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageBatch",
    "ImageFileDataset",
    "ImageItem",
    "ImageLoadError",
    "LoadFailure",
    "collate_images",
    "list_images",
    "load_image",
    "to_rgb",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 1 << 30
"""Largest image (width x height) :func:`load_image` decodes by default: 1 Gi pixels, 3 GiB as RGB."""

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
"""Extensions :func:`list_images` collects from directories (case-insensitive). Whole-slide formats
such as .svs are left out on purpose: a directory of slides goes to ``musk.wsi``. They still load when
named explicitly."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")


class ImageLoadError(ValueError):
    """A file that exists but cannot be read as an image; the message names the file and the reason."""


# ---- Pillow's global pixel limit, lifted only while this module decodes -----------------------------
_limit_lock = threading.Lock()
_limit_users = 0
_saved_limit: int | None = None


@contextmanager
def _pillow_pixel_limit_lifted() -> Iterator[None]:
    global _limit_users, _saved_limit
    with _limit_lock:
        if _limit_users == 0:
            _saved_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            # Someone may have set their own limit meanwhile: keep theirs.
            if _limit_users == 0 and Image.MAX_IMAGE_PIXELS is None:
                Image.MAX_IMAGE_PIXELS = _saved_limit


# ---- pixel conversions --------------------------------------------------------------------------------
def _select_largest_page(im: Image.Image) -> None:
    """Seek a multi-page TIFF to its largest page (the first one on a tie)."""
    if im.format != "TIFF" or getattr(im, "n_frames", 1) < 2:
        return
    best, best_area = 0, im.width * im.height
    for page in range(1, im.n_frames):
        im.seek(page)
        if im.width * im.height > best_area:
            best, best_area = page, im.width * im.height
    im.seek(best)


def _to_uint8(values: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    if sixteen_bit:
        return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    values = np.where(np.isfinite(values), values, 0).astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low >= 0 and high <= 1:
        values = values * 255
    elif low < 0 or high > 255:
        values = (values - low) * (255 / (high - low))
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _scaled_to_grey(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float single-channel image -> 8-bit ``L`` (see the module docstring)."""
    values = np.asarray(im)
    sixteen_bit = im.mode in _SIXTEEN_BIT_MODES or (
        im.mode == "I" and (values.size == 0 or (values.min() >= 0 and values.max() <= 65535))
    )
    return Image.fromarray(_to_uint8(values, sixteen_bit), mode="L")


def _on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB (a new image unless it is RGB already)."""
    if im.mode in _SIXTEEN_BIT_MODES or im.mode in ("I", "F"):
        return _scaled_to_grey(im).convert("RGB")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        return _on_white(im)
    if im.mode == "RGB":
        return im
    return im.convert("RGB")


def load_image(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an image file as an 8-bit RGB PIL image, orientation and transparency resolved.

    Raises ``FileNotFoundError`` for a missing path and :class:`ImageLoadError` (naming the file and the
    reason) for anything that cannot be decoded, including images of more than ``max_pixels`` pixels
    (``None``: no limit).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    try:
        with _pillow_pixel_limit_lifted(), Image.open(path) as src:
            _select_largest_page(src)
            pixels = src.width * src.height
            if max_pixels is not None and pixels > max_pixels:
                raise ImageLoadError(
                    f"cannot load image {str(path)!r}: {src.width}x{src.height} = {pixels} pixels exceeds "
                    f"max_pixels={max_pixels} (read whole slides with `musk wsi`; musk.load_image takes a larger limit)"
                )
            src.load()
            oriented = ImageOps.exif_transpose(src)  # always a new image, detached from the file
        return to_rgb(oriented)
    except ImageLoadError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # corrupt files surface as many exception types from Pillow's plugins
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ImageLoadError(f"cannot load image {str(path)!r}: {reason}") from exc


# ---- listing files --------------------------------------------------------------------------------------
def _images_under(directory: Path) -> list[Path]:
    found = []
    for path in directory.rglob("*"):
        relative = path.relative_to(directory).parts
        if any(part.startswith(".") for part in relative):  # hidden files, macOS "._x.jpg", .git ...
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append(path)
    return sorted(found)


def list_images(inputs: Sequence[str | Path] | str | Path) -> list[Path]:
    """Image files named by ``inputs``: files are kept as given (any extension), directories are searched
    recursively for :data:`IMAGE_EXTENSIONS` (sorted, hidden entries skipped). A path named twice is kept once.

    Raises ``FileNotFoundError`` naming a path that does not exist, ``ValueError`` when nothing is found.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    result: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            candidates = _images_under(path)
            if not candidates:
                logger.warning("no images (%s) under %s", ", ".join(IMAGE_EXTENSIONS), path)
        elif path.exists():
            candidates = [path]
        else:
            raise FileNotFoundError(f"input {str(path)!r} does not exist")
        for candidate in candidates:
            key = Path(os.path.abspath(candidate))  # not resolve(): two links to one file are two inputs
            if key not in seen:
                seen.add(key)
                result.append(candidate)
    if not result:
        shown = ", ".join(str(Path(p)) for p in inputs) or "(no inputs)"
        raise ValueError(f"no image files found in {shown} (extensions searched: {', '.join(IMAGE_EXTENSIONS)})")
    return result


# ---- dataset and collation ------------------------------------------------------------------------------
class ImageItem(NamedTuple):
    """One dataset item: ``image`` is the transformed tensor, or None with ``error`` saying why."""

    image: torch.Tensor | None
    index: int
    error: str | None = None


class LoadFailure(NamedTuple):
    """An item that could not be loaded: its dataset index and a message naming the file."""

    index: int
    error: str


class ImageBatch(NamedTuple):
    """``images`` (N, C, H, W) of the items that loaded, their dataset ``indices`` (N,), the ``failures``.

    When every item of the batch failed, ``images`` and ``indices`` are empty (shape (0,)).
    """

    images: torch.Tensor
    indices: torch.Tensor
    failures: list[LoadFailure]


class ImageFileDataset(torch.utils.data.Dataset):
    """Image files -> :class:`ImageItem`; a file that fails to load gives an item with its error instead
    of raising, so one bad file does not stop a run. Use with ``collate_fn=collate_images``."""

    def __init__(self, paths: Sequence[str | Path], transform: Callable[[Image.Image], torch.Tensor]):
        self.paths = [Path(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> ImageItem:
        path = self.paths[index]
        try:
            image = load_image(path)
        except (ImageLoadError, OSError) as exc:  # OSError: missing or unreadable file
            logger.debug("skipping %s: %s", path, exc)
            return ImageItem(None, index, str(exc))
        return ImageItem(self.transform(image), index)


def collate_images(batch: Sequence[ImageItem | tuple]) -> ImageBatch:
    """DataLoader ``collate_fn`` for :class:`ImageFileDataset`: stacks the successes, lists the failures."""
    images, indices, failures = [], [], []
    for item in batch:
        image, index, error = ImageItem(*item)
        if image is None:
            failures.append(LoadFailure(int(index), error or "unknown error"))
        else:
            images.append(image)
            indices.append(int(index))
    if images:
        return ImageBatch(torch.stack(images), torch.tensor(indices, dtype=torch.long), failures)
    return ImageBatch(torch.empty(0), torch.empty(0, dtype=torch.long), failures)
