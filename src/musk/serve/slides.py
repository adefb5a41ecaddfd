"""Slide images for the viewer: Deep Zoom descriptors and tiles (OpenSlide's generator) and single patches.

Slides are addressed only by the names in the index. Each name's file is resolved once, when the index is
opened (symbolic links followed then); requests can name nothing else, and a file whose path leads elsewhere
later (replaced by a link) is refused, so no request reaches another file.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

logger = logging.getLogger(__name__)

__all__ = ["SlideNotFound", "SlideTiles"]

TILE_SIZE = 254
TILE_OVERLAP = 1
TILE_FORMAT = "jpeg"
JPEG_QUALITY = 85
#: Slides kept open at once (each holds a file handle and OpenSlide's caches).
OPEN_SLIDES = 16


class SlideNotFound(LookupError):
    """No slide of that name in the index (or no tile or region of it there)."""


class SlideTiles:
    """Deep Zoom and patch images of the slides ``paths`` names (name -> file), opened on first use."""

    def __init__(self, paths: Iterable[tuple[str, str | os.PathLike | None]]):
        self._paths: dict[str, Path] = {}
        for name, path in paths:
            resolved = Path(os.path.realpath(path)) if path is not None else None
            if resolved is not None and resolved.is_file():
                self._paths[name] = resolved
            else:
                logger.warning("slide %s: no slide file (%s); its images will not be served", name, path)
        self._open: OrderedDict[str, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, name: str) -> bool:
        return name in self._paths

    def dzi(self, name: str) -> str:
        """The Deep Zoom descriptor (XML) of a slide, level-0 pixels as image coordinates."""
        return self._open_slide(name)[1].get_dzi(TILE_FORMAT)

    def tile(self, name: str, level: int, col: int, row: int) -> bytes:
        """One JPEG Deep Zoom tile."""
        generator = self._open_slide(name)[1]
        if not 0 <= level < generator.level_count:
            raise SlideNotFound(f"slide {name!r} has Deep Zoom levels 0..{generator.level_count - 1}")
        cols, rows = generator.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise SlideNotFound(f"level {level} of slide {name!r} has {cols} x {rows} tiles")
        return _jpeg(generator.get_tile(level, (col, row)))

    def patch(self, name: str, x: int, y: int, patch_size: int, size: int) -> bytes:
        """The level-0 square (x, y, patch_size) of a slide as a ``size`` px JPEG, read from the best level."""
        slide, _ = self._open_slide(name)
        width, height = slide.dimensions
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"({x}, {y}) is outside slide {name!r} ({width} x {height} pixels)")
        level = slide.get_best_level_for_downsample(patch_size / size)
        scale = slide.level_downsamples[level]
        side = max(1, round(patch_size / scale))
        region = slide.read_region((x, y), level, (side, side))
        return _jpeg(_on_white(region).resize((size, size), Image.Resampling.BICUBIC))

    def _open_slide(self, name: str) -> tuple:
        """(OpenSlide object, its DeepZoomGenerator); a slide pushed out of the cache closes when no request
        holds it any more."""
        from openslide import open_slide
        from openslide.deepzoom import DeepZoomGenerator

        path = self._paths.get(name)
        if path is None:
            raise SlideNotFound(f"no slide named {name!r} in the index")
        if Path(os.path.realpath(path)) != path:
            logger.warning("slide %s: %s now leads to another file; not served", name, path)
            raise SlideNotFound(f"slide {name!r} has changed on disk since the service started")
        with self._lock:
            if name in self._open:
                self._open.move_to_end(name)
                return self._open[name]
            slide = open_slide(str(path))
            self._open[name] = (slide, DeepZoomGenerator(slide, TILE_SIZE, TILE_OVERLAP, limit_bounds=False))
            while len(self._open) > OPEN_SLIDES:
                self._open.popitem(last=False)
            return self._open[name]


def _on_white(region: Image.Image) -> Image.Image:
    if region.mode != "RGBA":
        return region.convert("RGB")
    background = Image.new("RGBA", region.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, region).convert("RGB")


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
