"""Tissue segmentation on a slide thumbnail: saturation above an Otsu threshold, small holes filled, specks dropped.

H&E tissue is coloured and the glass around it is grey or white, so the HSV saturation separates them. The
threshold is Otsu's on the (median-filtered) saturation, clipped to [``min_saturation``, ``max_saturation``]:
a slide of bare glass gives an empty mask instead of a split of its noise, and a field that is all tissue (no
glass for Otsu to find) stays tissue instead of being split into pale and dark halves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_path

__all__ = ["TissueMask", "contour_overlay", "segment_tissue"]


@dataclass
class TissueMask:
    """A boolean tissue mask at thumbnail scale and the slide's level-0 (width, height) it covers."""

    mask: np.ndarray
    level0_size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Level-0 pixels per mask pixel along x and y."""
        return self.level0_size[0] / self.mask.shape[1], self.level0_size[1] / self.mask.shape[0]

    def tissue_fraction(self, coords: np.ndarray, size_level0: int) -> np.ndarray:
        """Fraction of tissue in each square patch (level-0 top-left ``coords``, side ``size_level0``)."""
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        sx, sy = self.scale
        height, width = self.mask.shape
        # integral image: the tissue count of any rectangle in four look-ups
        integral = np.zeros((height + 1, width + 1), dtype=np.int64)
        integral[1:, 1:] = self.mask.astype(np.int64).cumsum(0).cumsum(1)
        x0 = np.clip(np.floor(coords[:, 0] / sx + 0.5), 0, width).astype(np.int64)
        y0 = np.clip(np.floor(coords[:, 1] / sy + 0.5), 0, height).astype(np.int64)
        x1 = np.clip(np.floor((coords[:, 0] + size_level0) / sx + 0.5), 0, width).astype(np.int64)
        y1 = np.clip(np.floor((coords[:, 1] + size_level0) / sy + 0.5), 0, height).astype(np.int64)
        x1, y1 = np.maximum(x1, np.minimum(x0 + 1, width)), np.maximum(y1, np.minimum(y0 + 1, height))
        count = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        area = (x1 - x0) * (y1 - y0)
        return np.divide(count, area, out=np.zeros(len(coords)), where=area > 0)

    def save(self, path: str | os.PathLike) -> None:
        """The mask as a black/white PNG (lossless, so :meth:`load` gives it back exactly)."""
        with atomic_path(path) as tmp:
            Image.fromarray(self.mask.astype(np.uint8) * 255).save(tmp, format="PNG")

    @classmethod
    def load(cls, path: str | os.PathLike, level0_size: tuple[int, int]) -> TissueMask:
        with Image.open(path) as image:
            return cls(np.asarray(image.convert("L")) > 127, level0_size)


def segment_tissue(
    thumbnail: Image.Image,
    level0_size: tuple[int, int],
    mpp: float,
    min_saturation: float = 0.08,
    max_saturation: float = 0.2,
    min_area_um2: float = 20_000.0,
    max_hole_um2: float = 5_000.0,
) -> TissueMask:
    """Tissue mask of a slide from its ``thumbnail``.

    ``mpp`` is the slide's level-0 resolution; areas are in square microns: tissue pieces smaller than
    ``min_area_um2`` are dropped, holes smaller than ``max_hole_um2`` are filled (larger ones, such as
    lumens and fat, stay out of the mask).
    """
    from PIL import ImageFilter

    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    saturation = thumbnail.convert("RGB").convert("HSV").getchannel("S").filter(ImageFilter.MedianFilter(5))
    saturation = np.asarray(saturation)
    threshold = min(max(round(min_saturation * 255), otsu_threshold(saturation)), round(max_saturation * 255))
    mask = saturation > threshold
    um2_per_pixel = (mpp * level0_size[0] / thumbnail.width) * (mpp * level0_size[1] / thumbnail.height)
    mask = ~_drop_small_regions(~mask, max_hole_um2 / um2_per_pixel)  # fill small holes
    mask = _drop_small_regions(mask, min_area_um2 / um2_per_pixel)
    return TissueMask(mask, level0_size)


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of 8-bit values: the level ``t`` (``> t`` is foreground) maximising between-class variance."""
    counts = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256)
    weight_low = counts.cumsum()
    weight_high = counts.sum() - weight_low
    sum_low = (counts * levels).cumsum()
    mean_low = np.divide(sum_low, weight_low, out=np.zeros(256), where=weight_low > 0)
    mean_high = np.divide(sum_low[-1] - sum_low, weight_high, out=np.zeros(256), where=weight_high > 0)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return int(np.argmax(between))


def _drop_small_regions(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """``mask`` without its connected regions (4-connected) of fewer than ``min_pixels`` pixels."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def contour_overlay(
    thumbnail: Image.Image, mask: np.ndarray, colour: tuple[int, int, int] = (0, 200, 0)
) -> Image.Image:
    """``thumbnail`` with the outline of the tissue ``mask`` drawn on it, for checking by eye."""
    from scipy import ndimage

    edge = mask & ~ndimage.binary_erosion(mask, iterations=2, border_value=0)
    pixels = np.asarray(thumbnail.convert("RGB")).copy()
    pixels[edge] = colour
    return Image.fromarray(pixels)


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write an image as PNG atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=1)
    return Path(path)
