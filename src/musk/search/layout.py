"""The index directory and its manifest, ``index.json``: written last and atomically, so a folder without it (or
with a half-written one) never passes for a finished index.

Layout::

    index.json     model, weights fingerprint, dimension, backend and its state, the slide records, row counts
    coords.i64     level-0 (x, y) of every stored patch, in slide order (append-only rows, see musk.search.store)
    slides.f32     each slide's embedding (the normalised mean of its patch vectors), one row per slide key
    vectors.f32    the FAISS backend's patch vectors (rows parallel to coords.i64); ann.<generation>.faiss its
                   approximate index; milvus.db a Milvus Lite database
    .lock          held by the process writing the index

A build writes into ``.<name>.building`` beside the index (with ``build.jsonl``, its journal of finished slides)
and renames it into place when it is finished.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..files import write_json
from .records import SearchError, SlideRecord

__all__ = ["FORMAT", "MANIFEST", "IndexManifest", "index_lock", "read_manifest", "staging_dir", "write_manifest"]

FORMAT = "musk-search-index"
VERSION = 1
MANIFEST = "index.json"
JOURNAL = "build.jsonl"
COORDS = "coords.i64"
SLIDE_VECTORS = "slides.f32"


@dataclass
class IndexManifest:
    """Everything ``index.json`` records. ``kind`` is what was asked for (``auto`` included); the kind in use
    is in ``backend_state``. ``rows`` counts the rows of the per-patch files, those of replaced slides included
    (``vectors`` counts the live ones); ``next_key`` is the key the next added slide gets."""

    model: str
    weights_sha256: str
    fingerprint: dict
    dim: int
    backend: str
    kind: str
    backend_state: dict = field(default_factory=dict)
    slides: list[SlideRecord] = field(default_factory=list)
    rows: int = 0
    next_key: int = 0
    generation: int = 0
    created: str = ""
    updated: str = ""
    package_version: str = __version__

    @property
    def vectors(self) -> int:
        return sum(record.patches for record in self.slides)

    def to_json(self) -> dict:
        data = {k: v for k, v in vars(self).items() if k != "slides"}
        data["slides"] = [record.to_dict() for record in self.slides]
        return {"format": FORMAT, "version": VERSION, **data}

    @classmethod
    def from_json(cls, data: dict) -> IndexManifest:
        values = {k: v for k, v in data.items() if k not in ("format", "version", "slides")}
        return cls(**values, slides=[SlideRecord.from_dict(s) for s in data.get("slides", [])])


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def staging_dir(index_dir: str | os.PathLike) -> Path:
    """Where a build of ``index_dir`` is written until it is finished."""
    index_dir = Path(index_dir)
    return index_dir.with_name(f".{index_dir.name}.building")


def read_manifest(directory: str | os.PathLike) -> IndexManifest:
    """The manifest of a finished index; ``SearchError`` for a folder that is not one (saying why)."""
    directory = Path(directory).expanduser()
    if not directory.exists():
        if staging_dir(directory).is_dir():
            raise SearchError(f"the build of {directory} was interrupted: run the same `musk index build` to finish")
        raise FileNotFoundError(f"no index at {directory}")
    if not directory.is_dir():
        raise SearchError(f"{directory} is a file, not an index folder")
    path = directory / MANIFEST
    if not path.is_file():
        raise SearchError(f"{directory} is not a finished musk index (no {MANIFEST}); build it with `musk index build`")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise SearchError(f"{path} is not valid JSON ({e}): the index is damaged; build it again") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SearchError(f"{path} is not a musk search index manifest")
    if data.get("version", 0) > VERSION:
        raise SearchError(f"{directory} was written by a newer musk-pathology (index version {data['version']})")
    return IndexManifest.from_json(data)


def write_manifest(directory: str | os.PathLike, manifest: IndexManifest) -> None:
    manifest.updated = now()
    manifest.created = manifest.created or manifest.updated
    write_json(Path(directory) / MANIFEST, manifest.to_json())


@contextmanager
def index_lock(directory: str | os.PathLike):
    """Hold the index's write lock; ``SearchError`` when another process is writing it."""
    from ..wsi.locks import exclusive_lock

    with exclusive_lock(Path(directory) / ".lock") as taken:
        if not taken:
            raise SearchError(f"another process is writing {directory}; wait for it to finish")
        yield
