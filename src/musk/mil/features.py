"""Patch-feature h5 files as slide-level models read them: checked from their headers before any data is read.

A feature file is what ``musk wsi`` writes (docs/architecture.md, "On-disk formats"): ``features``, a (N, D) real
floating-point dataset, and ``coords`` (N, 2), both stored in the file itself. Refused, naming the file and what
to do: a dataset stored outside the file (HDF5 external storage, a virtual dataset, a link to another file: a
crafted file could make us read any file of the machine), a ``features`` group or one of another rank or type
(complex values included), ``coords`` of another shape or length, more than :data:`MAX_PATCHES` patches or
:data:`MAX_WIDTH` features per patch, and data larger than the memory available (a 2 KB file can declare
gigabytes).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..wsi.h5 import PatchFile, import_h5py, plain_value

__all__ = ["MAX_PATCHES", "MAX_WIDTH", "FeatureShape", "available_memory", "check_feature_file", "read_feature_file"]

#: Patches per slide file: a 40x slide of 200,000 x 100,000 pixels cut into 224-pixel patches has 400,000.
MAX_PATCHES = 4_000_000
#: Features per patch (MUSK's multiscale features have 2,048).
MAX_WIDTH = 65_536
_FIX = "extract its features again with `musk wsi` or remove the slide"
#: Reads smaller than this are not weighed against the memory available (reading /proc/meminfo costs more).
_SMALL_READ = 64 * 2**20


@dataclass(frozen=True)
class FeatureShape:
    """What a feature file declares: ``patches`` rows of ``width`` features."""

    patches: int
    width: int


def available_memory() -> int:
    """Bytes of memory this machine can still give (Linux: MemAvailable; elsewhere: the physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return sys.maxsize


def _stored_dataset(f, path: Path, name: str):
    """The dataset ``name`` of the open file ``f``, refused unless its data is stored in this file."""
    h5py = import_h5py()
    link = f.get(name, getlink=True)
    if link is None:
        raise ValueError(f"{path} has no {name!r} dataset (it has: {', '.join(f.keys()) or 'nothing'}); {_FIX}")
    if not isinstance(link, h5py.HardLink):
        target = getattr(link, "filename", None) or getattr(link, "path", "")
        raise ValueError(f"{path}: {name!r} is a link ({target}), not data stored in the file: refused; {_FIX}")
    dataset = f[name]
    if not isinstance(dataset, h5py.Dataset):
        raise ValueError(f"{path}: {name!r} is a {type(dataset).__name__.lower()}, not a dataset; {_FIX}")
    if dataset.is_virtual or dataset.external:
        kind = "a virtual dataset" if dataset.is_virtual else "stored in external files"
        raise ValueError(f"{path}: {name!r} is {kind}, which could read other files: refused; {_FIX}")
    return dataset


def _check_features(path: Path, features) -> FeatureShape:
    if features.ndim != 2:
        shape = features.shape
        raise ValueError(f"{path}: 'features' has shape {shape}; a feature file holds (patches, width); {_FIX}")
    if features.dtype.kind != "f":
        kind = "complex" if features.dtype.kind == "c" else str(features.dtype)
        raise ValueError(f"{path}: 'features' holds {kind} values, not real floating-point numbers; {_FIX}")
    shape = FeatureShape(*(int(n) for n in features.shape))
    if shape.patches > MAX_PATCHES or shape.width > MAX_WIDTH:
        raise ValueError(
            f"{path} declares {shape.patches:,} patches of {shape.width:,} features, beyond the {MAX_PATCHES:,} "
            f"patches and {MAX_WIDTH:,} features a slide file may have: it is damaged or not a feature file; {_FIX}"
        )
    needed = shape.patches * shape.width * (4 + features.dtype.itemsize)  # as stored, then as float32
    if needed > _SMALL_READ and needed > available_memory():
        raise ValueError(
            f"{path}: reading its {shape.patches:,} x {shape.width:,} features needs {needed / 2**30:.1f} GiB, "
            f"more than the {available_memory() / 2**30:.1f} GiB of memory available; free memory or use a "
            "machine with more"
        )
    return shape


def _check_coords(path: Path, coords, patches: int) -> None:
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.dtype.kind not in "iuf":
        raise ValueError(f"{path}: 'coords' is {coords.dtype} {coords.shape}, not (patches, 2) numbers; {_FIX}")
    if coords.shape[0] != patches:
        raise ValueError(f"{path}: {coords.shape[0]:,} coords but {patches:,} feature rows: they must match; {_FIX}")


@contextmanager
def _checked(path: str | os.PathLike) -> Iterator[tuple[object, object, object, FeatureShape]]:
    """The open file, its ``features`` and ``coords`` datasets and their shape, after the checks of this module."""
    h5py = import_h5py()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no feature file at {path}" + (" (not a regular file)" if path.exists() else ""))
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path} is not a readable h5 file ({e}); {_FIX}") from e
    with f:
        features = _stored_dataset(f, path, "features")
        shape = _check_features(path, features)
        coords = _stored_dataset(f, path, "coords")
        _check_coords(path, coords, shape.patches)
        yield f, features, coords, shape


def check_feature_file(path: str | os.PathLike) -> FeatureShape:
    """The shape ``path`` declares, after the checks of this module (no data is read)."""
    with _checked(path) as (_, _, _, shape):
        return shape


def finite_features(path: str | os.PathLike, features: np.ndarray) -> np.ndarray:
    """``features`` (read from ``path``) as float32; NaN or infinite values are refused, naming the file."""
    features = np.asarray(features, dtype=np.float32)
    finite = np.isfinite(features)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(1))
        raise ValueError(
            f"{path}: {int((~finite).sum())} feature value(s) are NaN or infinite, in {len(rows)} patch(es) "
            f"(rows {rows[:5].tolist()}); extract its features again or remove the slide"
        )
    return features


def read_feature_file(path: str | os.PathLike) -> PatchFile:
    """``coords``, float32 ``features`` and the attributes of a feature file, read after the checks of this
    module (NaN or infinite values refused too: one such value makes every loss NaN)."""
    with _checked(path) as (f, features, coords, _):
        values = finite_features(path, features[()])
        return PatchFile(coords[()], {"features": values}, {k: plain_value(v) for k, v in f.attrs.items()})
