"""The embedded backend: patch vectors in an append-only file (memory-mapped), searched exactly or through a FAISS
index (HNSW, or IVF-PQ whose candidates are re-ranked exactly from the stored vectors)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

from ..files import atomic_path
from .backend import EXACT_MAX, Backend, resolve_kind, split_ids
from .layout import IndexManifest
from .records import SearchError, SlideRecord
from .store import RowFile

__all__ = ["FaissBackend", "exact_top_k"]

logger = logging.getLogger(__name__)

VECTORS = "vectors.f32"
#: Rows scored at a time by an exact scan (64 k rows of 1024 float32 = 256 MB).
CHUNK_ROWS = 65_536
#: Approximate search fetches this many times k candidates (at least RERANK_MIN) and re-ranks them exactly.
RERANK_FACTOR = 20
RERANK_MIN = 200
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 80
IVF_TRAIN_MAX = 131_072
IVF_TRAIN_PER_LIST = 64
#: Lists probed per query: a sixty-fourth of them, at least IVF_NPROBE_MIN (16 of 1024 at 1 M vectors).
IVF_NPROBE_MIN = 16
SEED = 0


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ImportError("the faiss backend needs faiss-cpu: pip install 'musk-pathology[search]'") from e
    return faiss


def exact_top_k(blocks: Iterator[tuple[int, np.ndarray]], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``(scores, rows)`` per query over ``(first row, block of vectors)`` pairs, best first."""
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    for first, block in blocks:
        scores = queries @ np.asarray(block).T
        rows = np.broadcast_to(np.arange(first, first + block.shape[0], dtype=np.int64), scores.shape)
        best_scores, best_rows = _keep_best(np.hstack([best_scores, scores]), np.hstack([best_rows, rows]), k)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_rows, order, 1)


def _keep_best(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if scores.shape[1] <= k:
        return scores, rows
    keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1)


def ivfpq_shape(vectors: int, dim: int) -> tuple[int, int]:
    """``(lists, sub-quantizers)`` of an IVF-PQ index: about sqrt(n) lists (a power of two, 39+ training vectors
    each); one 8-bit code per 16 dimensions (64 bytes for MUSK's 1024), at least 16 codes."""
    if vectors < 256:
        raise SearchError(f"an ivfpq index needs at least 256 vectors, this one has {vectors}; use --kind flat")
    lists = int(2 ** round(np.log2(np.sqrt(vectors))))
    lists = max(1, min(lists, vectors // 39))
    wanted = min(dim, max(dim // 16, 16))  # at least 16 codes: fewer cannot tell neighbours apart
    sub = next(m for m in range(wanted, dim + 1) if dim % m == 0)
    return lists, sub


class FaissBackend(Backend):
    name = "faiss"

    def __init__(self, directory, manifest: IndexManifest):
        super().__init__(directory, manifest)
        self.store = RowFile(self.directory / VECTORS, np.float32, manifest.dim)
        self._set_layout(manifest)
        self._vectors = None
        self._ann = None

    def _set_layout(self, manifest: IndexManifest) -> None:
        live = sorted(manifest.slides, key=lambda r: r.start)
        self._starts = np.array([r.start for r in live], dtype=np.int64)
        self._keys = np.array([r.key for r in live], dtype=np.int64)
        self._start_of = {r.key: (r.start, r.patches) for r in live}
        self._all_ranges = [(r.start, r.start + r.patches) for r in live if r.patches]
        self._all_count = manifest.vectors

    @property
    def stored(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = np.asarray(self.store.read(self.manifest.rows))  # a plain view: no memmap overhead
        return self._vectors

    @property
    def ann(self):
        name = self.manifest.backend_state.get("ann")
        if self._ann is None and name:
            self._ann = _faiss().read_index(str(self.directory / name))
        return self._ann

    # ---- writing ---------------------------------------------------------------------------
    def append(self, record: SlideRecord, first: int, vectors: np.ndarray) -> None:
        self.store.append(vectors)

    def rollback(self) -> None:
        self.store.truncate(self.manifest.rows)

    def flush(self) -> None:
        self.store.sync()

    def commit(self, manifest: IndexManifest) -> dict:
        self.store.sync()
        kind = resolve_kind(manifest.kind, manifest.vectors)
        if kind == "flat":
            return {"kind": "flat"}
        index = self._updated_ann(manifest, kind)
        name = f"ann.{manifest.generation}.faiss"
        with atomic_path(self.directory / name) as tmp:
            _faiss().write_index(index, str(tmp))
        return {"kind": kind, "ann": name, "ann_keys": sorted(r.key for r in manifest.slides)}

    def cleanup(self, old_state: dict) -> None:
        old = old_state.get("ann")
        if old and old != self.manifest.backend_state.get("ann"):
            (self.directory / old).unlink(missing_ok=True)

    def _updated_ann(self, manifest: IndexManifest, kind: str):
        """The committed ANN with the dropped slides removed and the new ones added, or a new one."""
        old = self.manifest.backend_state
        old_keys = set(old.get("ann_keys", ()))
        live = {r.key: r for r in manifest.slides}
        removed = [r for r in self.manifest.slides if r.key in old_keys and r.key not in live]
        if old.get("kind") != kind or not old.get("ann") or (removed and kind == "hnsw"):
            return self._new_ann(manifest, kind)
        faiss = _faiss()
        index = faiss.read_index(str(self.directory / old["ann"]))
        for r in removed:
            index.remove_ids(faiss.IDSelectorRange(r.start, r.start + r.patches))
        added = [r for key, r in live.items() if key not in old_keys]
        self._add(index, _rows_of(added), manifest.rows)
        return index

    def _new_ann(self, manifest: IndexManifest, kind: str):
        faiss = _faiss()
        rows = _rows_of(manifest.slides)
        logger.info("building a %s index of %d vectors", kind, len(rows))
        if kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(manifest.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index = faiss.IndexIDMap(hnsw)
        else:
            lists, sub = ivfpq_shape(len(rows), manifest.dim)
            quantizer = faiss.IndexFlatIP(manifest.dim)
            index = faiss.IndexIVFPQ(quantizer, manifest.dim, lists, sub, 8, faiss.METRIC_INNER_PRODUCT)
            train = min(IVF_TRAIN_MAX, max(IVF_TRAIN_PER_LIST * lists, 256 * 39))
            sample = np.sort(np.random.default_rng(SEED).permutation(rows)[:train])
            index.train(np.ascontiguousarray(self.store.read(manifest.rows)[sample]))
            index.nprobe = max(IVF_NPROBE_MIN, lists // 64)
        self._add(index, rows, manifest.rows)
        return index

    def _add(self, index, rows: np.ndarray, committed: int) -> None:
        stored = self.store.read(committed)
        for first in range(0, len(rows), CHUNK_ROWS):
            part = rows[first : first + CHUNK_ROWS]
            index.add_with_ids(np.ascontiguousarray(stored[part]), part)

    # ---- reading ---------------------------------------------------------------------------
    def _ranges(self, keys: Sequence[int] | None) -> list[tuple[int, int]]:
        if keys is None:
            return self._all_ranges
        chosen = (self._start_of[k] for k in keys if k in self._start_of)
        return sorted((start, start + n) for start, n in chosen if n)

    def _blocks(self, ranges: list[tuple[int, int]]) -> Iterator[tuple[int, np.ndarray]]:
        for start, stop in ranges:
            for first in range(start, stop, CHUNK_ROWS):
                yield first, self.stored[first : min(stop, first + CHUNK_ROWS)]

    def search(self, queries: np.ndarray, k: int, keys: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        ranges = self._ranges(keys)
        allowed = self._all_count if keys is None else sum(stop - start for start, stop in ranges)
        exact = self.kind == "flat" or (keys is not None and allowed <= EXACT_MAX)  # a small subset: scanned
        if not exact:
            scores, rows = self._approximate(queries, k, ranges if keys is not None else None)
            exact = (rows >= 0).sum(1).min() < min(k, allowed)  # a filter the probed part of the index missed
        if exact:
            scores, rows = exact_top_k(self._blocks(ranges), queries, k)
        return scores, self._ids(rows)

    def _approximate(self, queries, k: int, ranges) -> tuple[np.ndarray, np.ndarray]:
        faiss, index = _faiss(), self.ann
        fetch = max(RERANK_FACTOR * k, RERANK_MIN)
        selector = None
        if ranges is not None:  # a bitmap over stored rows (the ids of the index)
            mask = np.zeros(self.manifest.rows, dtype=bool)
            for start, stop in ranges:
                mask[start:stop] = True
            bitmap = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(fetch, 64))
        else:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=index.nprobe)
        _, candidates = index.search(queries, fetch, params=params)
        return self._rerank(queries, candidates, k)

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of each query's candidates (``-1``: none), the ``k`` best first."""
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_rows = np.full((len(queries), k), -1, dtype=np.int64)
        for i, rows in enumerate(candidates):
            rows = np.unique(rows[rows >= 0])
            scores = self.stored[rows] @ queries[i]
            order = np.argsort(-scores, kind="stable")[:k]
            out_scores[i, : len(order)], out_rows[i, : len(order)] = scores[order], rows[order]
        width = int((out_rows >= 0).sum(1).max()) if len(out_rows) else 0
        return out_scores[:, :width], out_rows[:, :width]

    def _ids(self, rows: np.ndarray) -> np.ndarray:
        """Vector ids of stored rows (``-1`` stays ``-1``)."""
        where = np.clip(np.searchsorted(self._starts, rows, side="right") - 1, 0, None)
        ids = (self._keys[where] << 32) | (rows - self._starts[where])
        return np.where(rows >= 0, ids, -1)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        keys, patches = split_ids(ids)
        rows = np.array([self._start_of[key][0] for key in keys.tolist()], dtype=np.int64) + patches
        return self.stored[rows].reshape(len(rows), self.manifest.dim)

    def slide_vectors(self, record: SlideRecord) -> np.ndarray:
        return np.asarray(self.stored[record.start : record.start + record.patches])


def _rows_of(records) -> np.ndarray:
    parts = [np.arange(r.start, r.start + r.patches, dtype=np.int64) for r in records if r.patches]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
