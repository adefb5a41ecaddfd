"""Per-patch values drawn over a slide thumbnail (zero-shot tissue maps, MIL attention)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def heatmap_overlay(
    thumbnail: Image.Image,
    coords: np.ndarray,
    values: np.ndarray,
    patch_size_level0: int,
    level0_size: tuple[int, int],
    cmap: str = "jet",
    alpha: float = 0.5,
    value_range: tuple[float, float] | None = None,
) -> Image.Image:
    """``thumbnail`` with each patch tinted by its value; where patches overlap their values are averaged.

    ``coords`` are level-0 top-left (x, y) corners, ``level0_size`` the slide's level-0 (width, height).
    Values are mapped to colours over ``value_range`` (default: their min and max).
    """
    from matplotlib import colormaps

    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) != len(coords):
        raise ValueError(f"{len(values)} values for {len(coords)} patches")
    base = np.asarray(thumbnail.convert("RGB"), dtype=np.float64) / 255
    height, width = base.shape[:2]
    scale_x, scale_y = width / level0_size[0], height / level0_size[1]
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for (x, y), value in zip(coords, values, strict=True):
        x0, y0 = int(x * scale_x), int(y * scale_y)
        x1 = max(x0 + 1, int(round((x + patch_size_level0) * scale_x)))
        y1 = max(y0 + 1, int(round((y + patch_size_level0) * scale_y)))
        total[y0:y1, x0:x1] += value
        count[y0:y1, x0:x1] += 1
    covered = count > 0
    if not covered.any():
        return thumbnail.convert("RGB")
    low, high = value_range if value_range is not None else (values.min(), values.max())
    mean = np.divide(total, count, out=np.zeros_like(total), where=covered)
    scaled = np.clip((mean - low) / (high - low), 0, 1) if high > low else np.full_like(mean, 0.5)
    colours = colormaps[cmap](scaled)[..., :3]
    blended = np.where(covered[..., None], (1 - alpha) * base + alpha * colours, base)
    return Image.fromarray(np.round(blended * 255).astype(np.uint8))
