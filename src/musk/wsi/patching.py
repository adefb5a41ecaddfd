"""A grid of square tissue patches at a target magnification (or mpp), in level-0 coordinates.

A patch of ``patch_size`` pixels at the target resolution covers ``patch_size_level0`` level-0 pixels. It is
read from the pyramid level closest to the target without being coarser (``read_size`` pixels there) and
resized to ``patch_size``. Only patches lying wholly inside the slide are kept, and only those whose tissue
fraction (from the tissue mask) is at least ``min_tissue``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .readers import SlideReader
from .tissue import TissueMask

__all__ = ["PatchGrid", "plan_patches"]


@dataclass
class PatchGrid:
    """Where the patches of one slide are and how to read them."""

    coords: np.ndarray
    patch_size: int
    patch_size_level0: int
    level: int
    read_size: int
    target_magnification: float | None
    target_mpp: float | None
    overlap: int
    min_tissue: float

    def attrs(self, reader: SlideReader, name: str) -> dict[str, object]:
        """The h5 attributes of a patch file (CLAM/TRIDENT names; docs/architecture.md, section "On-disk formats")."""
        return {
            "name": name,
            "patch_size": self.patch_size,
            "patch_size_level0": self.patch_size_level0,
            "target_magnification": self.target_magnification,
            "target_mpp": self.target_mpp,
            "level0_magnification": reader.magnification,
            "level0_mpp": reader.mpp,
            "level0_width": reader.dimensions[0],
            "level0_height": reader.dimensions[1],
            "patch_level": self.level,
            "read_size": self.read_size,
            "overlap": self.overlap,
            "min_tissue": self.min_tissue,
        }

    @classmethod
    def from_attrs(cls, coords: np.ndarray, attrs: dict) -> PatchGrid:
        """The grid of a patch file written with :meth:`attrs`."""
        return cls(
            coords=coords,
            patch_size=int(attrs["patch_size"]),
            patch_size_level0=int(attrs["patch_size_level0"]),
            level=int(attrs["patch_level"]),
            read_size=int(attrs["read_size"]),
            target_magnification=attrs.get("target_magnification"),
            target_mpp=attrs.get("target_mpp"),
            overlap=int(attrs["overlap"]),
            min_tissue=float(attrs["min_tissue"]),
        )


def level0_scale(reader: SlideReader, magnification: float | None, mpp: float | None) -> float:
    """Level-0 pixels per target pixel for a target ``magnification`` or ``mpp`` (exactly one of them)."""
    if (magnification is None) == (mpp is None):
        raise ValueError("give exactly one of a target magnification and a target mpp")
    target = magnification if magnification is not None else mpp
    if not target > 0:
        raise ValueError(f"the target magnification/mpp must be positive, got {target}")
    scale = reader.magnification / magnification if magnification is not None else mpp / reader.mpp
    if scale < 1 - 1e-3:
        target = f"{magnification:g}x" if magnification is not None else f"{mpp:g} mpp"
        raise ValueError(
            f"{reader.path} is scanned at {reader.magnification:.3g}x ({reader.mpp:.4g} mpp); patching it at "
            f"{target} would upsample: choose a lower magnification"
        )
    return scale


def plan_patches(
    reader: SlideReader,
    tissue: TissueMask,
    patch_size: int = 384,
    magnification: float | None = 20.0,
    mpp: float | None = None,
    overlap: int = 0,
    min_tissue: float = 0.5,
) -> PatchGrid:
    """Patches of ``patch_size`` pixels at the target, stepping ``patch_size - overlap`` target pixels."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    if not 0 <= overlap < patch_size:
        raise ValueError(f"overlap must be in [0, patch_size), got {overlap} for patch_size {patch_size}")
    if not 0 <= min_tissue <= 1:
        raise ValueError(f"min_tissue is a fraction in [0, 1], got {min_tissue}")
    scale = level0_scale(reader, magnification, mpp)
    size0 = max(1, round(patch_size * scale))
    step0 = max(1, round((patch_size - overlap) * scale))
    width, height = reader.dimensions
    xs = np.arange(0, width - size0 + 1, step0, dtype=np.int64)
    ys = np.arange(0, height - size0 + 1, step0, dtype=np.int64)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")  # row-major: left to right, then top to bottom
    coords = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    if len(coords):
        coords = coords[tissue.tissue_fraction(coords, size0) >= max(min_tissue, 1e-9)]
    level = reader.best_level_for_downsample(scale)
    read_size = max(1, round(size0 / reader.level_downsamples[level]))
    return PatchGrid(
        coords.reshape(-1, 2), patch_size, size0, level, read_size, magnification, mpp, overlap, min_tissue
    )
