"""The small interface every vector backend implements, and the choice of the search structure (``kind``).

A stored vector is named by its id ``key << 32 | patch``: the slide's key in the index and the patch's row in
that slide. Ids are the same in every backend, so hits can be compared across them and re-scored exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .layout import IndexManifest
from .records import SearchError, SlideRecord

__all__ = ["BACKENDS", "KINDS", "Backend", "backend_class", "open_backend", "patch_ids", "resolve_kind", "split_ids"]

BACKENDS = ("faiss", "milvus")
KINDS = ("auto", "flat", "hnsw", "ivfpq")
#: ``auto`` searches exactly up to this many vectors, and a filtered query over at most this many is answered by
#: an exact scan of them (a scan of 50 k vectors of 1024 dimensions takes tens of milliseconds on a CPU).
EXACT_MAX = 50_000
#: The approximate kind ``auto`` takes above EXACT_MAX.
AUTO_APPROXIMATE = "ivfpq"


def resolve_kind(requested: str, vectors: int) -> str:
    if requested not in KINDS:
        raise SearchError(f"unknown index kind {requested!r}; choose one of {', '.join(KINDS)}")
    if requested != "auto":
        return requested
    return "flat" if vectors <= EXACT_MAX else AUTO_APPROXIMATE


def patch_ids(key: int, first: int, patches: int) -> np.ndarray:
    """Vector ids of patches ``first`` ... ``first + patches - 1`` of the slide ``key``."""
    return (np.int64(key) << 32) | np.arange(first, first + patches, dtype=np.int64)


def split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, patch rows)`` of vector ids."""
    ids = np.asarray(ids, dtype=np.int64)
    return ids >> 32, ids & 0xFFFFFFFF


class Backend(ABC):
    """Stores the patch vectors of an index and finds the nearest ones by inner product (cosine: unit vectors).

    Writing: :meth:`append` each slide's vectors, :meth:`commit` (returns the state the manifest records), write
    the manifest, :meth:`cleanup`. Whatever was appended but never committed is dropped by :meth:`rollback`.
    """

    name: str

    def __init__(self, directory: Path, manifest: IndexManifest):
        self.directory, self.manifest = Path(directory), manifest

    # ---- writing ---------------------------------------------------------------------------
    @staticmethod
    def initial_state(uri: str | None) -> dict:
        """The state a new index of this backend starts from (recorded before anything is stored)."""
        return {}

    @abstractmethod
    def append(self, record: SlideRecord, first: int, vectors: np.ndarray) -> None:
        """Store vectors of one slide, patches ``first``, ``first + 1``, ...; not yet searchable."""

    @abstractmethod
    def rollback(self) -> None:
        """Drop everything stored after the manifest's committed state (what a killed writer left)."""

    @abstractmethod
    def commit(self, manifest: IndexManifest) -> dict:
        """Make ``manifest``'s slides searchable (the new ones added, the dropped ones removed); returns the state
        to record in it. Nothing a reader of the old manifest uses is changed."""

    def flush(self) -> None:  # noqa: B027 - optional
        """Make the appended vectors durable (before a journal records them)."""

    def cleanup(self, old_state: dict) -> None:  # noqa: B027 - optional
        """After the new manifest is written: remove what only the old state used."""

    def destroy(self) -> None:  # noqa: B027 - optional
        """Remove data kept outside the index folder (an overwritten index's remote collection)."""

    # ---- reading ---------------------------------------------------------------------------
    @abstractmethod
    def search(self, queries: np.ndarray, k: int, keys: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each (Q, k') with k' <= k, best first, among the slides ``keys`` (None: all)."""

    @abstractmethod
    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (float32, in that order)."""

    @abstractmethod
    def slide_vectors(self, record: SlideRecord) -> np.ndarray:
        """All stored vectors of one slide, in patch order."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections and files."""

    @property
    def kind(self) -> str:
        return self.manifest.backend_state.get("kind", "flat")


def backend_class(name: str) -> type[Backend]:
    """The backend called ``name``."""
    if name == "faiss":
        from .backend_faiss import FaissBackend

        return FaissBackend
    if name == "milvus":
        from .backend_milvus import MilvusBackend

        return MilvusBackend
    raise SearchError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def open_backend(directory: Path, manifest: IndexManifest, uri: str | None = None) -> Backend:
    """The backend ``manifest.backend`` over ``directory`` (``uri``: a Milvus server for a new Milvus index)."""
    cls = backend_class(manifest.backend)
    return cls(directory, manifest, uri) if manifest.backend == "milvus" else cls(directory, manifest)
