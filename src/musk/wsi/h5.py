"""Patch coordinate and feature files (h5), readable by CLAM- and TRIDENT-style code.

Datasets: ``coords`` int64 (N, 2), level-0 top-left (x, y); ``features`` float32 (N, D) in feature files;
per-patch values such as zero-shot probabilities or MIL attention as further (N, ...) datasets. Slide-level
facts (patch size, magnification, mpp, level-0 size, encoder ...) are file attributes; the geometry is also on
``coords`` and the encoder's facts on ``features``, where TRIDENT-style readers look (``f["coords"].attrs``).
Files are written to a temporary name and renamed, so a killed job never leaves a half-written file under the
final name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..files import atomic_path

#: File attributes also written on the ``coords`` dataset (TRIDENT's meaning: ``patch_size`` at the target,
#: ``patch_size_level0`` at level 0). Not ``patch_level``: CLAM's readers would read ``patch_size`` pixels there.
COORDS_ATTRS = (
    "name",
    "patch_size",
    "patch_size_level0",
    "target_magnification",
    "target_mpp",
    "level0_magnification",
    "level0_mpp",
    "level0_width",
    "level0_height",
    "overlap",
    "min_tissue",
)
#: File attributes also written on the ``features`` dataset.
FEATURES_ATTRS = ("encoder", "weights_sha256", "feature_kind", "precision", "package_version")


@dataclass
class PatchFile:
    """The contents of one h5 file: ``coords``, the other per-patch arrays by name, and the attributes."""

    coords: np.ndarray
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, object] = field(default_factory=dict)

    @property
    def features(self) -> np.ndarray:
        if "features" not in self.arrays:
            raise KeyError("this h5 file holds no 'features' dataset (a coordinates-only file?)")
        return self.arrays["features"]

    def __len__(self) -> int:
        return len(self.coords)


def import_h5py():
    """The h5py module, or an ImportError that says which extra provides it."""
    try:
        import h5py
    except ImportError as e:
        raise ImportError("h5 files need h5py: pip install 'musk-pathology[wsi]'") from e
    return h5py


def write_patch_file(
    path: str | os.PathLike,
    coords: np.ndarray,
    arrays: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, object] | None = None,
) -> Path:
    """Write ``coords`` (N, 2), per-patch ``arrays`` (N, ...) and ``attrs`` to ``path`` atomically.

    ``features`` is stored as float32; attributes that are ``None`` are left out (h5 has no null). Those of
    :data:`COORDS_ATTRS` and :data:`FEATURES_ATTRS` are written on the file and on that dataset.
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    checked = {}
    for name, value in (arrays or {}).items():
        value = np.asarray(value, dtype=np.float32 if name == "features" else None)
        if value.shape[:1] != coords.shape[:1]:
            raise ValueError(f"{name!r} has {value.shape[0]} rows but there are {len(coords)} coordinates")
        checked[name] = value
    h5py = import_h5py()
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("coords", data=coords)
            for name, value in checked.items():
                f.create_dataset(name, data=value)
            for key, value in (attrs or {}).items():
                if value is None:
                    continue
                f.attrs[key] = value
                for dataset, keys in (("coords", COORDS_ATTRS), ("features", FEATURES_ATTRS)):
                    if key in keys and dataset in f:
                        f[dataset].attrs[key] = value
    return path


def read_patch_file(path: str | os.PathLike, arrays: tuple[str, ...] | None = None) -> PatchFile:
    """Read an h5 patch file: every dataset, or only ``coords`` and the named ``arrays``."""
    h5py = import_h5py()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no h5 file at {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path} is not a readable h5 file ({e}); delete it and extract again") from e
    with f:
        if "coords" not in f:
            raise ValueError(f"{path} has no 'coords' dataset (it has: {', '.join(f.keys()) or 'nothing'})")
        wanted = [k for k in f.keys() if k != "coords"] if arrays is None else list(arrays)
        missing = [k for k in wanted if k not in f]
        if missing:
            raise ValueError(f"{path} has no {', '.join(map(repr, missing))} dataset (it has: {', '.join(f.keys())})")
        attrs = {k: plain_value(v) for k, v in f.attrs.items()}
        return PatchFile(f["coords"][()], {k: f[k][()] for k in wanted}, attrs)


def patch_file_problem(path: str | os.PathLike, arrays: tuple[str, ...] = ()) -> str | None:
    """What is wrong with the h5 file at ``path`` as a patch file holding ``coords`` and ``arrays`` (None: nothing),
    from its header alone: every dataset is there, with one row per coordinate, and its data lies inside the
    file. Cheap (no data is read): a job checks its finished outputs this way before it trusts them."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    h5py = import_h5py()
    try:
        with h5py.File(path, "r") as f:
            size = path.stat().st_size
            for name in ("coords", *arrays):
                problem = _dataset_problem(f.get(name), name, size, h5py)
                if problem is not None:
                    return problem
            if f["coords"].shape[1:] != (2,) or any(f[name].shape[:1] != f["coords"].shape[:1] for name in arrays):
                return "the datasets' rows do not match the coordinates"
    except (OSError, ValueError, KeyError) as e:
        return f"not a readable h5 file ({e})"
    return None


def _dataset_problem(dataset, name: str, file_size: int, h5py) -> str | None:
    if not isinstance(dataset, h5py.Dataset) or dataset.ndim < 1:
        return f"no {name!r} dataset"
    if dataset.chunks is not None:  # chunked storage: no single extent to check
        return None
    offset, stored = dataset.id.get_offset(), dataset.id.get_storage_size()
    if stored < dataset.size * dataset.dtype.itemsize or (offset is not None and offset + stored > file_size):
        return f"the {name!r} data is cut short"
    return None


def plain_value(value: object) -> object:
    """h5 attribute values as plain Python (numpy scalars and bytes become int/float/str)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
