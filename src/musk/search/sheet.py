"""Contact sheets: the patches of the top hits, read from their slides at their coordinates, each captioned with
its rank, slide and score. A slide file that has moved since indexing gives a grey tile marked missing."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..files import atomic_path
from .records import Hit, SlideRecord

__all__ = ["contact_sheet", "read_patch"]

logger = logging.getLogger(__name__)

CAPTION = 30
MISSING_GREY = (200, 200, 200)


def read_patch(reader, record: SlideRecord, x: int, y: int) -> Image.Image:
    """The patch at level-0 ``(x, y)`` as its features were made (read at the extraction level and resized to
    the patch size; level 0 when the feature file did not say)."""
    if record.level is not None and record.read_size is not None and record.level < reader.level_count:
        patch = reader.read_region((x, y), record.level, (record.read_size, record.read_size))
    else:
        patch = reader.read_region((x, y), 0, (record.patch_size_level0, record.patch_size_level0))
    size = record.patch_size or patch.width
    if patch.size != (size, size):
        patch = patch.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
    return patch


def _tiles(index, hits: Sequence[Hit], tile: int) -> tuple[list[Image.Image | None], list[str]]:
    """Each hit's patch at ``tile`` pixels (None where its slide cannot be read), and those slides' names."""
    from ..wsi.readers import open_slide

    tiles: list[Image.Image | None] = [None] * len(hits)
    missing = []
    for name in dict.fromkeys(h.slide for h in hits):
        record = index.slide(name)
        try:
            if record.path is None:
                raise FileNotFoundError("the index does not know the slide file")
            with open_slide(record.path, record.mpp) as reader:
                for i, hit in enumerate(hits):
                    if hit.slide == name:
                        tiles[i] = read_patch(reader, record, hit.x, hit.y).resize((tile, tile), Image.Resampling.BOX)
        except (OSError, ValueError) as e:
            logger.warning("slide %s (%s) cannot be read, its tiles are missing: %s", name, record.path, e)
            missing.append(name)
    return tiles, missing


def contact_sheet(index, hits: Sequence[Hit], path: str | os.PathLike, columns: int = 5, tile: int = 192) -> list[str]:
    """Draw ``hits`` as a grid of captioned tiles into the PNG ``path``; returns the slides whose files are missing."""
    tiles, missing = _tiles(index, hits, tile)
    columns = max(1, min(columns, len(hits)))
    rows = max(1, -(-len(hits) // columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (hit, image) in enumerate(zip(hits, tiles, strict=True)):
        left, top = (i % columns) * tile, (i // columns) * (tile + CAPTION)
        if image is None:
            draw.rectangle([left, top, left + tile - 1, top + tile - 1], fill=MISSING_GREY)
            draw.text((left + 8, top + tile // 2), "slide file missing", fill="black", font=font)
        else:
            sheet.paste(image, (left, top))
        draw.text((left + 4, top + tile + 2), f"{hit.rank}. {hit.slide}"[:32], fill="black", font=font)
        draw.text((left + 4, top + tile + 15), f"score {hit.score:.4f}", fill="black", font=font)
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return missing
