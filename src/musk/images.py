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

Images larger than ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`, about 89 M pixels) are refused from
their declared size, before any pixel is decoded: a 150 KB PNG can declare 30000 x 30000 pixels (2.7 GB as
RGB). Pillow's own process-wide guard (``PIL.Image.MAX_IMAGE_PIXELS``) is left as it is; above twice its value
Pillow refuses the file itself, so a larger ``max_pixels`` needs that raised too. Whole-slide images belong to
``musk.wsi``. Only regular files are read: a named pipe or a device would block or never end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageBatch",
    "ImageDataset",
    "ImageInput",
    "ImageItem",
    "ImageLoadError",
    "LoadFailure",
    "SLIDE_EXTENSIONS",
    "check_image_input",
    "collate_images",
    "image_name",
    "list_images",
    "load_image",
    "to_rgb",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 89_478_485
"""Largest image (width x height) :func:`load_image` decodes by default: Pillow's own warning threshold,
about 89 M pixels (256 MiB as RGB). Pass ``max_pixels`` (``--max_pixels`` in the CLI) for larger ones."""

SLIDE_EXTENSIONS = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".czi")
"""Whole-slide formats: a folder of these goes to ``musk wsi``, not to the patch-level commands."""

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
"""Extensions :func:`list_images` collects from directories (case-insensitive). Whole-slide formats
such as .svs are left out on purpose: a directory of slides goes to ``musk.wsi``. They still load when
named explicitly."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")


class ImageLoadError(ValueError):
    """A file that exists but cannot be read as an image; the message names the file and the reason."""


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
    reason) for anything that cannot be decoded, a path that is not a regular file (a folder, a named pipe, a
    broken link), and images of more than ``max_pixels`` pixels (``None``: no limit of ours).
    """
    path = Path(path)
    _check_regular_file(path)
    try:
        with Image.open(path) as src:
            _select_largest_page(src)
            pixels = src.width * src.height
            if max_pixels is not None and pixels > max_pixels:
                raise ImageLoadError(
                    f"cannot load image {str(path)!r}: {src.width}x{src.height} = {pixels} pixels exceeds "
                    f"max_pixels={max_pixels} (read whole slides with `musk wsi`; --max_pixels / max_pixels= "
                    "raises the limit for an image you trust)"
                )
            src.load()
            oriented = ImageOps.exif_transpose(src)  # always a new image, detached from the file
        return to_rgb(oriented)
    except ImageLoadError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(
            f"cannot load image {str(path)!r}: {exc} (Pillow's own limit, PIL.Image.MAX_IMAGE_PIXELS)"
        ) from exc
    except Exception as exc:  # corrupt files surface as many exception types from Pillow's plugins
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ImageLoadError(f"cannot load image {str(path)!r}: {reason}") from exc


def _check_regular_file(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise ImageLoadError(f"cannot load image {str(path)!r}: a broken symbolic link")
    if not path.exists():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a pipe, socket or device)"
        raise ImageLoadError(f"cannot load image {str(path)!r}: {kind}")


# ---- listing files --------------------------------------------------------------------------------------
def _images_under(directory: Path) -> list[Path]:
    """Image files under ``directory``; broken links with an image extension too (they are reported as failed)."""
    found = []
    for path in directory.rglob("*"):
        relative = path.relative_to(directory).parts
        if any(part.startswith(".") for part in relative):  # hidden files, macOS "._x.jpg", .git ...
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and (path.is_file() or path.is_symlink()):
            found.append(path)
    return sorted(found)


def list_images(inputs: Sequence[str | Path] | str | Path) -> list[Path]:
    """Image files named by ``inputs``: files are kept as given (any extension), directories are searched
    recursively for :data:`IMAGE_EXTENSIONS` (sorted, hidden entries skipped). A path named twice is kept once.
    Broken links are kept, to be reported as failed.

    Raises ``FileNotFoundError`` naming a path that does not exist, ``ValueError`` when nothing is found (saying
    so when the folders hold whole-slide files, which ``musk wsi`` reads).
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
        elif path.exists() or path.is_symlink():
            candidates = [path]
        else:
            raise FileNotFoundError(f"input {str(path)!r} does not exist")
        for candidate in candidates:
            key = Path(os.path.abspath(candidate))  # not resolve(): two links to one file are two inputs
            if key not in seen:
                seen.add(key)
                result.append(candidate)
    if not result:
        raise ValueError(_nothing_found(inputs))
    return result


def _nothing_found(inputs: Sequence[str | Path]) -> str:
    shown = ", ".join(str(Path(p)) for p in inputs) or "(no inputs)"
    message = f"no image files found in {shown} (extensions searched: {', '.join(IMAGE_EXTENSIONS)})"
    slides = [p for item in inputs if Path(item).is_dir() for p in Path(item).rglob("*")
              if p.suffix.lower() in SLIDE_EXTENSIONS]  # fmt: skip
    if slides:
        message += f"; it holds {len(slides)} whole-slide file(s) such as {slides[0].name}: use `musk wsi` for slides"
    return message


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


ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor
"""What the embedding functions take for one image: a file path, a PIL image, an (H, W) or (H, W, 3|4) uint8
array, or a float tensor (3, S, S) already preprocessed."""


def check_image_input(item: ImageInput, index: int) -> Path | Image.Image | torch.Tensor:
    """One input as a path, a PIL image or a preprocessed tensor; ``TypeError``/``ValueError`` naming
    ``images[index]`` for anything else."""
    if isinstance(item, (str, os.PathLike)):
        return Path(item)
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (3, 4))):
            raise ValueError(
                f"images[{index}]: an array must be uint8 of shape (H, W), (H, W, 3) or (H, W, 4), "
                f"got {item.dtype} {item.shape}"
            )
        return Image.fromarray(item)
    if isinstance(item, torch.Tensor):
        if not item.is_floating_point() or item.ndim != 3 or item.shape[0] != 3:
            raise ValueError(
                f"images[{index}]: a tensor must be a preprocessed float image of shape (3, S, S) "
                f"(see musk.get_transform), got {item.dtype} {tuple(item.shape)}"
            )
        return item
    raise TypeError(
        f"images[{index}]: expected a path, PIL image, uint8 array or float tensor, got {type(item).__name__}"
    )


def image_name(item: Path | Image.Image | torch.Tensor, index: int) -> str:
    """How results and failures name an input: its path, or ``<image i>`` for an in-memory image."""
    return str(item) if isinstance(item, Path) else f"<image {index}>"


class ImageDataset(torch.utils.data.Dataset):
    """Images (see :data:`ImageInput`) -> :class:`ImageItem`. A file that fails to load gives an item with its
    error instead of raising, so one bad file does not stop a run. Use with ``collate_fn=collate_images``."""

    def __init__(
        self,
        images: Sequence[ImageInput],
        transform: Callable[[Image.Image], torch.Tensor],
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.items = [check_image_input(item, i) for i, item in enumerate(images)]
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> ImageItem:
        item = self.items[index]
        if isinstance(item, torch.Tensor):
            return ImageItem(item, index)
        if isinstance(item, Image.Image):
            return ImageItem(self.transform(to_rgb(item)), index)
        try:
            image = load_image(item, max_pixels=self.max_pixels)
        except (ImageLoadError, OSError) as exc:  # OSError: missing or unreadable file
            logger.debug("skipping %s: %s", item, exc)
            return ImageItem(None, index, str(exc))
        return ImageItem(self.transform(image), index)


def collate_images(batch: Sequence[ImageItem | tuple]) -> ImageBatch:
    """DataLoader ``collate_fn`` for :class:`ImageDataset`: stacks the successes, lists the failures."""
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
