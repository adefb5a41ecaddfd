"""Synthetic whole-slide images for the wsi tests: tiled pyramidal TIFFs with tissue squares at known places.

The background is near-white glass with faint grey noise; each tissue square is pink/purple H&E-like texture.
Pyramid levels are separate tiled pages (each half the size of the one before), the level-0 resolution is in
the TIFF resolution tags (centimetre unit), which is where OpenSlide's generic TIFF reader finds the mpp.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def slide_pixels(size: tuple[int, int], squares: list[tuple[int, int, int, int]], seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8: glass with tissue in each ``(x0, y0, x1, y1)`` square (level-0 pixels)."""
    width, height = size
    rng = np.random.default_rng(seed)
    pixels = np.clip(238 + rng.normal(0, 3, (height, width, 1)), 0, 255).repeat(3, axis=2)
    for x0, y0, x1, y1 in squares:
        h, w = y1 - y0, x1 - x0
        yy, xx = np.mgrid[0:h, 0:w]
        stain = (np.sin(xx / 7.0) + np.cos(yy / 5.0)) * 20
        base = np.array([200.0, 110.0, 170.0])
        pixels[y0:y1, x0:x1] = np.clip(
            base + stain[..., None] * np.array([0.5, 1.0, 0.6]) + rng.normal(0, 12, (h, w, 3)), 0, 255
        )
    return pixels.astype(np.uint8)


def write_pyramid(
    path: Path,
    pixels: np.ndarray,
    mpp: float | None,
    levels: int = 3,
    tile: int = 128,
) -> Path:
    """A tiled pyramidal TIFF of ``pixels`` (level 0) and ``levels - 1`` halvings; ``mpp`` None: no resolution tags."""
    import tifffile

    pages = [pixels]
    for _ in range(levels - 1):
        image = Image.fromarray(pages[-1])
        pages.append(np.asarray(image.resize((image.width // 2, image.height // 2), Image.Resampling.BOX)))
    with tifffile.TiffWriter(path) as tiff:
        for level, page in enumerate(pages):
            resolution = {}
            if mpp is not None:
                per_cm = 1e4 / (mpp * 2**level)
                resolution = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            tiff.write(
                page,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                subfiletype=1 if level else 0,
                metadata=None,
                **resolution,
            )
    return path
