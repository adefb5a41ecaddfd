"""Whole-slide readers: OpenSlide for vendor formats and tiled TIFF, Pillow for plain single-level images.

Every reader has the same small interface: level-0 ``dimensions``, ``level_count``, ``level_dimensions``,
``level_downsamples``, ``mpp`` (microns per level-0 pixel), ``magnification``, ``read_region`` and
``thumbnail``. A slide whose resolution is unknown stops with :class:`SlideError` unless ``mpp`` is given.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..images import DEFAULT_MAX_PIXELS, load_image
from .shared_pixels import SharedPixels

__all__ = ["ImageSlideReader", "OpenSlideReader", "SlideError", "SlideReader", "open_slide"]

logger = logging.getLogger(__name__)

#: Objective magnification of a given resolution, by the usual scanner convention (20x = 0.5 micron per pixel).
MICRONS_AT_1X = 10.0

#: Single-level image files read whole with Pillow (OpenSlide is tried first for .tif/.tiff).
PLAIN_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class SlideError(ValueError):
    """A slide that cannot be used as it is; the message names the file and says what to do."""


def _white_background(region: Image.Image) -> Image.Image:
    """RGBA from OpenSlide -> RGB, unscanned (transparent) areas white like empty glass."""
    if region.mode != "RGBA":
        return region.convert("RGB")
    if region.getextrema()[3][0] == 255:  # fully opaque: the common case, no compositing needed
        return region.convert("RGB")
    background = Image.new("RGBA", region.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, region).convert("RGB")


class SlideReader:
    """The reader interface; subclasses set the geometry in ``__init__`` and implement ``_read``."""

    path: Path
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float
    magnification: float
    #: Whether DataLoader workers may use this reader (else each opens the slide itself).
    shared_with_workers = False

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The smallest level whose downsample does not exceed ``downsample`` (reading it never upsamples)."""
        fitting = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * (1 + 1e-6)]
        return max(fitting, key=lambda i: self.level_downsamples[i]) if fitting else 0

    def read_region(self, xy_level0: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """RGB ``size`` (width, height) pixels of ``level`` whose top-left corner is ``xy_level0`` in level-0 pixels."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path}: level {level} does not exist (the slide has {self.level_count})")
        return self._read((int(xy_level0[0]), int(xy_level0[1])), level, (int(size[0]), int(size[1])))

    def _read(self, xy: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        raise NotImplementedError

    def thumbnail(self, max_size: int) -> Image.Image:
        """The whole slide as RGB, its longer side ``max_size`` pixels (never larger than level 0)."""
        if max_size < 1:
            raise ValueError(f"the thumbnail size must be at least 1 pixel, got {max_size}")
        width, height = self.dimensions
        scale = min(1.0, max_size / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        level = self.best_level_for_downsample(1 / scale)
        image = self.read_region((0, 0), level, self.level_dimensions[level])
        return image.resize(size, Image.Resampling.BOX) if image.size != size else image

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, {self.dimensions[0]}x{self.dimensions[1]}, "
            f"{self.level_count} levels, {self.mpp:.4g} mpp, {self.magnification:.3g}x)"
        )

    def _set_resolution(self, mpp: float | None, objective: float | None, override: float | None) -> None:
        """mpp and magnification from metadata, or from the caller's ``override`` mpp (which wins)."""
        if override is not None:
            if not override > 0:
                raise SlideError(f"{self.path}: mpp must be positive, got {override}")
            self.mpp, self.magnification = float(override), MICRONS_AT_1X / float(override)
            return
        if mpp is None and objective is None:
            raise SlideError(
                f"{self.path} has no resolution metadata (microns per pixel or objective magnification); "
                "give it with --mpp (microns per level-0 pixel, e.g. 0.25 for 40x, 0.5 for 20x) or an 'mpp' "
                "column in the slide list"
            )
        if mpp is None:
            logger.warning(
                "%s: no mpp in the metadata; assuming %.3g mpp from %gx", self.path, 10 / objective, objective
            )
        self.mpp = float(mpp) if mpp is not None else MICRONS_AT_1X / objective
        self.magnification = float(objective) if objective is not None else MICRONS_AT_1X / self.mpp


def _float_property(properties, key: str) -> float | None:
    try:
        value = float(properties[key])
    except (KeyError, ValueError, TypeError):
        return None
    return value if value > 0 else None


class OpenSlideReader(SlideReader):
    """Vendor formats (.svs, .ndpi, .mrxs, .scn ...) and tiled, optionally pyramidal, TIFF through OpenSlide."""

    def __init__(self, path: str | os.PathLike, mpp: float | None = None):
        import openslide

        self.path = Path(path)
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideError as e:
            raise SlideError(f"cannot open slide {self.path}: {e} (corrupt, truncated or unsupported file?)") from e
        props = self._slide.properties
        self.level_dimensions = tuple(tuple(map(int, d)) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self._set_resolution(
            _float_property(props, openslide.PROPERTY_NAME_MPP_X),
            _float_property(props, openslide.PROPERTY_NAME_OBJECTIVE_POWER),
            mpp,
        )

    def _read(self, xy: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        import openslide

        try:
            return _white_background(self._slide.read_region(xy, level, size))
        except openslide.OpenSlideError as e:
            raise SlideError(f"cannot read {size} at {xy} level {level} of {self.path}: {e}") from e

    def close(self) -> None:
        self._slide.close()


class ImageSlideReader(SlideReader):
    """A single-level image (PNG, JPEG, untiled TIFF ...); its resolution must be given (or be in TIFF tags).

    Images over ``max_pixels`` (default :data:`musk.images.DEFAULT_MAX_PIXELS`) are refused from their header,
    before any pixel is decoded. The image is decoded once into memory that DataLoader workers share
    (:class:`SharedPixels`): a worker maps it instead of decoding the file again.
    """

    shared_with_workers = True

    def __init__(self, path: str | os.PathLike, mpp: float | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.path = Path(path)
        self._set_resolution(_tiff_mpp(self.path), None, mpp)  # before decoding: a slide without one stops here
        _check_size(self.path, max_pixels)
        try:
            image = load_image(self.path, max_pixels=max_pixels)
        except ValueError as e:
            raise SlideError(f"cannot open slide {self.path}: {e}") from e
        self.level_dimensions = (image.size,)
        self.level_downsamples = (1.0,)
        self._pixels = SharedPixels.of(image)

    def _read(self, xy: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        (x, y), (width, height) = xy, size
        pixels = self._pixels.array
        region = np.full((height, width, 3), 255, dtype=np.uint8)  # beyond the edge: white, like empty glass
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, pixels.shape[1]), min(y + height, pixels.shape[0])
        if x1 > x0 and y1 > y0:
            region[y0 - y : y1 - y, x0 - x : x1 - x] = pixels[y0:y1, x0:x1]
        return Image.fromarray(region)

    def close(self) -> None:
        self._pixels.close()


_TOO_LARGE = (
    "raise the limit for an image you trust (--max_pixels / max_pixels=; above twice Pillow's own, "
    "PIL.Image.MAX_IMAGE_PIXELS, that too), or convert it to a tiled pyramidal TIFF, which is read a region at a time"
)


def _check_size(path: Path, max_pixels: int | None) -> None:
    """:class:`SlideError` when the image's header declares more than ``max_pixels`` pixels (nothing decoded)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError as e:
        raise SlideError(f"{path}: {e}; {_TOO_LARGE}") from None
    except Exception:  # noqa: BLE001 - an unreadable file: load_image says why
        return
    if max_pixels is not None and width * height > max_pixels:
        raise SlideError(
            f"{path} is a plain image of {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
            f"for decoding it whole; {_TOO_LARGE}"
        )


def _tiff_mpp(path: Path) -> float | None:
    """Microns per pixel from a TIFF's resolution tags when the unit is centimetre (as OpenSlide reads them)."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            unit = tags.get("ResolutionUnit")
            resolution = tags.get("XResolution")
            if unit is None or resolution is None or int(unit.value) != 3:
                return None
            numerator, denominator = resolution.value
            return 1e4 * denominator / numerator if numerator else None
    except Exception:  # noqa: BLE001 - unreadable tags mean unknown resolution, not a broken slide
        return None


def open_slide(
    path: str | os.PathLike, mpp: float | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> SlideReader:
    """A reader for ``path``: OpenSlide when it can read the file, else Pillow for plain images.

    ``mpp`` (microns per level-0 pixel) overrides the file's metadata and is required when it has none.
    ``max_pixels``: the largest plain image (PNG, JPEG, untiled TIFF) decoded, checked from its header (None: no
    limit of ours; Pillow's own, ``PIL.Image.MAX_IMAGE_PIXELS``, still applies); a larger one is better
    converted to a tiled pyramidal TIFF, which is read a region at a time.
    Raises ``FileNotFoundError`` for a missing file and :class:`SlideError` for one that cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no slide file at {path}")
    if path.suffix.lower() in PLAIN_IMAGE_EXTENSIONS:
        return ImageSlideReader(path, mpp, max_pixels)
    try:
        return OpenSlideReader(path, mpp)
    except SlideError as e:
        if path.suffix.lower() not in (".tif", ".tiff") or "resolution metadata" in str(e):
            raise
        return ImageSlideReader(path, mpp, max_pixels)  # an untiled TIFF, which OpenSlide does not read
