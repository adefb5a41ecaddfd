"""What an index is built from: ``musk wsi`` job directories, folders of h5 feature files, or h5 files (the
CLAM/TRIDENT layout: ``coords`` and ``features`` datasets), checked before anything is written."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..messages import listing
from ..wsi.h5 import import_h5py, plain_value
from .records import SearchError

__all__ = ["FEATURE_KINDS", "FeatureHeader", "FeatureSource", "find_sources", "read_chunks", "read_header"]

logger = logging.getLogger(__name__)

FEATURE_KINDS = ("cls", "ms", "proj")
#: The attributes an h5 file needs before its vectors can be placed in MUSK's image-text space.
REQUIRED_ATTRS = ("feature_kind", "weights_sha256", "patch_size_level0")
_HOW_TO_FIX = (
    "musk wsi extract writes them; for features made elsewhere set them with h5py: f.attrs['feature_kind'] = "
    "'cls', 'ms' or 'proj'; f.attrs['weights_sha256'] = the sha256 of the MUSK weights that made them; "
    "f.attrs['patch_size_level0'] = the patch side in level-0 pixels"
)


@dataclass(frozen=True)
class FeatureSource:
    """One slide's feature file, and the slide file (with its mpp override) when the job knows it."""

    name: str
    features: Path
    slide: Path | None = None
    mpp: float | None = None


@dataclass(frozen=True)
class FeatureHeader:
    """What an h5 feature file says about its contents, checked."""

    patches: int
    width: int
    kind: str
    weights_sha256: str
    encoder: str | None
    patch_size_level0: int
    patch_size: int | None
    magnification: float | None
    level: int | None
    read_size: int | None
    level0_mpp: float | None


def find_sources(inputs: Sequence[str | os.PathLike]) -> list[FeatureSource]:
    """The slides of every input (a job directory, a folder of ``.h5`` files, or ``.h5`` files), sorted by name;
    two different files for one slide name raise ``SearchError`` naming both."""
    if not inputs:
        raise SearchError("no inputs: give musk wsi job directories or h5 feature files")
    found: dict[str, FeatureSource] = {}
    for item in inputs:
        for source in _sources_of(Path(item).expanduser()):
            other = found.get(source.name)
            if other is not None and other.features.resolve() != source.features.resolve():
                raise SearchError(
                    f"two feature files for slide {source.name!r}: {other.features} and {source.features}; "
                    "index one of them (slide names must be unique in an index)"
                )
            found[source.name] = source
    if not found:
        raise SearchError(f"no h5 feature files in {listing(map(str, inputs))}")
    return [found[name] for name in sorted(found)]


def _sources_of(path: Path) -> list[FeatureSource]:
    if path.is_dir() and (path / "config.json").is_file():
        return _job_sources(path)
    if path.is_dir():
        return [FeatureSource(p.stem, p) for p in _h5_files(path)]
    if path.suffix == ".h5" and path.is_file():
        return [FeatureSource(path.stem, path)]
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    raise SearchError(f"{path} is not a musk wsi job directory, a folder of h5 files or an h5 file")


def _h5_files(folder: Path) -> list[Path]:
    """Finished h5 files (a writer's temporary files start with a dot)."""
    return sorted(p for p in folder.glob("*.h5") if p.is_file() and not p.name.startswith("."))


def _job_sources(job_dir: Path) -> list[FeatureSource]:
    """The extracted slides of a job, with their slide files where the job's slide list still finds them."""
    from ..wsi.slides import list_slides

    try:
        saved = json.loads((job_dir / "config.json").read_text())
    except ValueError as e:
        raise SearchError(f"{job_dir / 'config.json'} is not JSON ({e}); is {job_dir} a musk wsi job?") from e
    files = _h5_files(job_dir / "features")
    if not files:
        raise SearchError(f"{job_dir} holds no extracted features (features/*.h5): run `musk wsi extract` first")
    entries = {}
    try:
        entries = {entry.name: entry for entry in list_slides(saved.get("slides") or [])}
    except (OSError, ValueError) as e:
        logger.warning("%s: the slide list cannot be read (%s); slide paths are left unknown", job_dir, e)
    default_mpp = (saved.get("config") or {}).get("mpp")
    sources = []
    for path in files:
        entry = entries.get(path.stem)
        mpp = entry.mpp if entry is not None and entry.mpp is not None else default_mpp
        sources.append(FeatureSource(path.stem, path, entry.path if entry is not None else None, mpp))
    return sources


def _attrs(f) -> dict:
    """Attributes of the file, then of ``coords``, then of ``features`` (TRIDENT puts them on the datasets)."""
    merged = {}
    for node in (f, f.get("coords"), f.get("features")):
        if node is not None:
            merged |= {k: plain_value(v) for k, v in node.attrs.items() if k not in merged}
    return merged


def read_header(source: FeatureSource) -> FeatureHeader:
    """The checked header of ``source``'s h5 file (no features read); ``SearchError`` says what is missing."""
    h5py = import_h5py()
    path = source.features
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise SearchError(f"{path} is not a readable h5 file ({e})") from e
    with f:
        missing_data = [name for name in ("coords", "features") if name not in f]
        if missing_data:
            missing = " or ".join(missing_data)
            raise SearchError(f"{path} has no {missing} dataset: index feature files, not patch files")
        (n, width), coords_shape = f["features"].shape, f["coords"].shape
        attrs = _attrs(f)
    if coords_shape != (n, 2):
        raise SearchError(f"{path}: coords has shape {coords_shape} for {n} feature rows; expected ({n}, 2)")
    missing = [key for key in REQUIRED_ATTRS if attrs.get(key) in (None, "")]
    if missing:
        raise SearchError(f"{path} lacks the attribute(s) {', '.join(missing)}: {_HOW_TO_FIX}")
    if attrs["feature_kind"] not in FEATURE_KINDS:
        raise SearchError(f"{path}: feature_kind {attrs['feature_kind']!r} is not one of {', '.join(FEATURE_KINDS)}")
    return FeatureHeader(
        patches=n,
        width=width,
        kind=attrs["feature_kind"],
        weights_sha256=str(attrs["weights_sha256"]),
        encoder=attrs.get("encoder"),
        patch_size_level0=int(attrs["patch_size_level0"]),
        patch_size=_optional(attrs, "patch_size", int),
        magnification=_optional(attrs, "target_magnification", float),
        level=_optional(attrs, "patch_level", int),
        read_size=_optional(attrs, "read_size", int),
        level0_mpp=_optional(attrs, "level0_mpp", float),
    )


def _optional(attrs: dict, key: str, kind: type):
    value = attrs.get(key)
    return None if value is None or value == "" else kind(value)


def read_chunks(path: Path, rows: int = 16384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(coords, features)`` of an h5 file, ``rows`` patches at a time (one slide never needs to fit in memory);
    NaN or infinite features raise ``SearchError`` naming the file."""
    with import_h5py().File(path, "r") as f:
        coords, features = f["coords"], f["features"]
        for start in range(0, len(features), rows):
            chunk = np.asarray(features[start : start + rows], dtype=np.float32)
            if not np.isfinite(chunk).all():
                raise SearchError(f"{path}: some feature values are NaN or infinite; extract its features again")
            yield np.asarray(coords[start : start + rows], dtype=np.int64), chunk
