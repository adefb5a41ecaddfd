"""Per-patch values drawn over a slide thumbnail (zero-shot tissue maps, MIL attention), and their colour scale."""

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


def add_colour_scale(
    image: Image.Image,
    value_range: tuple[float, float] = (0.0, 1.0),
    cmap: str = "jet",
    label: str | None = None,
    alpha: float = 0.5,
) -> Image.Image:
    """``image`` with its colour scale in the lower right corner: a vertical bar of ``cmap`` from
    ``value_range[0]`` (bottom) to ``value_range[1]`` (top), blended on white with ``alpha`` as
    :func:`heatmap_overlay` blends it on the slide, its ends and middle labelled, ``label`` above it, on a white
    panel. An image under 64 pixels on a side is returned as it is (no room)."""
    from matplotlib import colormaps
    from PIL import ImageDraw

    width, height = image.size
    if min(width, height) < 64:
        return image
    bar_height = round(height * 0.25)
    bar_width, font = max(6, bar_height // 12), _font(min(max(9, bar_height // 10), 28))
    low, high = value_range
    ticks = [f"{value:.3g}" for value in (high, (low + high) / 2, low)]
    line = font.getbbox("0.5g")[3]
    margin = max(3, line // 3)
    title = _fitted(label, font, width // 8) if label else ""
    inner = max(bar_width + margin + max(font.getlength(t) for t in ticks), font.getlength(title))
    panel = (round(inner) + 2 * margin, bar_height + line + 2 * margin + (line + margin if title else 0))
    left, top = width - panel[0] - margin, height - panel[1] - margin
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    draw.rectangle((left, top, left + panel[0], top + panel[1]), fill=(255, 255, 255), outline=(128, 128, 128))
    if title:
        draw.text((left + margin, top + margin), title, fill=(0, 0, 0), font=font)
    bar_top = top + margin + line // 2 + (line + margin if title else 0)
    ramp = (1 - alpha) + alpha * colormaps[cmap](np.linspace(1.0, 0.0, bar_height))[:, :3]
    bar = np.broadcast_to(np.round(ramp * 255).astype(np.uint8)[:, None, :], (bar_height, bar_width, 3))
    out.paste(Image.fromarray(np.ascontiguousarray(bar)), (left + margin, bar_top))
    for text, fraction in zip(ticks, (0.0, 0.5, 1.0), strict=True):
        y = bar_top + fraction * (bar_height - 1)
        draw.text((left + 2 * margin + bar_width, y), text, fill=(0, 0, 0), font=font, anchor="lm")
    return out


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: the fixed-size bitmap font
        return ImageFont.load_default()


def _fitted(text: str, font, width: int) -> str:
    """``text``, cut short with an ellipsis to fit ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"
