"""The Milvus backend: patch vectors in a Milvus collection, for archives that outgrow one machine.

The same code talks to Milvus Lite (a local database inside the index folder, ``milvus.db``) and to a Milvus
server or cluster by URI (``http://host:19530``; a token, if the server needs one, comes from ``MILVUS_TOKEN``
and is never written to the index). Each row is ``id`` (``key << 32 | patch``), ``slide`` (the key) and
``vector``. Rows of slides that are not committed (a killed writer's, or a replaced slide's before it is
deleted) never reach a query: every search is limited to the manifest's keys.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Sequence

import numpy as np

from .backend import Backend, patch_ids, resolve_kind, split_ids
from .backend_faiss import RERANK_FACTOR, RERANK_MIN
from .layout import IndexManifest
from .records import SearchError, SlideRecord

__all__ = ["LITE_FILE", "MilvusBackend"]

logger = logging.getLogger(__name__)

LITE_FILE = "milvus.db"
#: The most results one Milvus search returns.
MAX_LIMIT = 16_384
INSERT_ROWS = 4_096
HNSW_PARAMS = {"M": 32, "efConstruction": 200}
IVF_LISTS = 1024
IVF_NPROBE = 64
KIND_TYPES = {"flat": "FLAT", "hnsw": "HNSW", "ivfpq": "IVF_PQ"}


def _milvus():
    try:
        import pymilvus
    except ImportError as e:
        raise ImportError(
            "the milvus backend needs pymilvus (and milvus-lite for local files): pip install 'musk-pathology[search]'"
        ) from e
    return pymilvus


def _is_local(uri: str) -> bool:
    return "://" not in uri


class MilvusBackend(Backend):
    name = "milvus"

    def __init__(self, directory, manifest: IndexManifest, uri: str | None = None):
        super().__init__(directory, manifest)
        state = manifest.backend_state
        state = state if state.get("collection") else self.initial_state(uri)
        self.uri, self.collection = state["uri"], state["collection"]
        self._client = None
        self._start_of = {r.key: r for r in manifest.slides}

    @property
    def client(self):
        if self._client is None:
            address = str(self.directory / self.uri) if _is_local(self.uri) else self.uri
            try:
                self._client = _milvus().MilvusClient(uri=address, token=os.environ.get("MILVUS_TOKEN", ""))
            except Exception as e:  # pymilvus raises its own exception types for every connection problem
                raise SearchError(f"cannot connect to Milvus at {address}: {e}") from e
            if self._client.has_collection(self.collection) and self._client.list_indexes(self.collection):
                self._client.load_collection(self.collection)  # a reopened collection starts released
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            if _is_local(self.uri):  # Milvus Lite serves the file from this process until told to stop
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(str(self.directory / self.uri))

    @staticmethod
    def initial_state(uri: str | None) -> dict:
        return {"kind": "flat", "uri": uri or LITE_FILE, "collection": f"musk_{secrets.token_hex(6)}", "dead": []}

    def _state(self, kind: str, dead: Sequence[int]) -> dict:
        return {"kind": kind, "uri": self.uri, "collection": self.collection, "dead": sorted(dead)}

    # ---- writing ---------------------------------------------------------------------------
    def _index_params(self, kind: str):
        """Milvus's index for ``kind``: FLAT (exact), HNSW, or IVF_PQ (one 8-bit code per 16 dimensions)."""
        params = self.client.prepare_index_params()
        if kind == "hnsw":
            params.add_index(field_name="vector", index_type="HNSW", metric_type="IP", params=HNSW_PARAMS)
        elif kind == "ivfpq":
            pq = {"nlist": IVF_LISTS, "m": max(1, self.manifest.dim // 16), "nbits": 8}
            params.add_index(field_name="vector", index_type="IVF_PQ", metric_type="IP", params=pq)
        else:
            params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        return params

    def _create(self) -> None:
        """The collection; its index is made when the first slides are committed."""
        milvus = _milvus()
        schema = self.client.create_schema(auto_id=False)
        schema.add_field("id", milvus.DataType.INT64, is_primary=True)
        schema.add_field("slide", milvus.DataType.INT64)
        schema.add_field("vector", milvus.DataType.FLOAT_VECTOR, dim=self.manifest.dim)
        self.client.create_collection(self.collection, schema=schema, consistency_level="Strong")

    def append(self, record: SlideRecord, first: int, vectors: np.ndarray) -> None:
        if not self.client.has_collection(self.collection):
            self._create()
        ids = patch_ids(record.key, first, len(vectors))
        vectors = np.asarray(vectors, dtype=np.float32)
        for first in range(0, len(vectors), INSERT_ROWS):
            part = slice(first, first + INSERT_ROWS)
            rows = [
                {"id": int(i), "slide": record.key, "vector": v} for i, v in zip(ids[part], vectors[part], strict=True)
            ]
            self.client.insert(self.collection, rows)

    def rollback(self) -> None:
        if not self.client.has_collection(self.collection):
            return
        dead = self.manifest.backend_state.get("dead", [])
        where = f"slide >= {self.manifest.next_key}" + (f" or slide in {list(dead)}" if dead else "")
        self.client.delete(self.collection, filter=where)

    def commit(self, manifest: IndexManifest) -> dict:
        kind = resolve_kind(manifest.kind, manifest.vectors)
        if not self.client.has_collection(self.collection):
            self._create()
        self.client.flush(self.collection)
        self._set_index(kind)
        live = {r.key for r in manifest.slides}
        return self._state(kind, [r.key for r in self.manifest.slides if r.key not in live])

    def _set_index(self, kind: str) -> None:
        """Give the collection the index of ``kind`` (replacing another kind's) and load it for searching.

        ``sync=False``: waiting for the index asks the server for a timestamp, which Milvus Lite does not
        implement (it logs a traceback); loading the collection waits for the index instead.
        """
        names = self.client.list_indexes(self.collection)
        if names and self.client.describe_index(self.collection, names[0]).get("index_type") == KIND_TYPES[kind]:
            self.client.load_collection(self.collection)
            return
        if names:
            logger.info("rebuilding the Milvus index of %s as %s", self.collection, KIND_TYPES[kind])
            self.client.release_collection(self.collection)
            self.client.drop_index(self.collection, names[0])
        self.client.create_index(self.collection, self._index_params(kind), sync=False)
        self.client.load_collection(self.collection)

    def cleanup(self, old_state: dict) -> None:
        dead = self.manifest.backend_state.get("dead", [])
        if dead:
            self.client.delete(self.collection, filter=f"slide in {list(dead)}")

    def destroy(self) -> None:
        if not _is_local(self.uri) and self.client.has_collection(self.collection):
            self.client.drop_collection(self.collection)

    # ---- reading ---------------------------------------------------------------------------
    def _filter(self, keys: Sequence[int] | None) -> str | None:
        """The Milvus filter for ``keys`` (None: every committed slide); None when no slide qualifies."""
        if keys is None:
            dead = self.manifest.backend_state.get("dead", [])
            return f"slide < {self.manifest.next_key}" + (f" and slide not in {list(dead)}" if dead else "")
        keys = [int(key) for key in keys if key in self._start_of and self._start_of[key].patches]
        return f"slide in {keys}" if keys else None

    def search(self, queries: np.ndarray, k: int, keys: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
        where = self._filter(keys)
        if where is None or k < 1 or not self.manifest.vectors:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        fetch = k if self.kind == "flat" else max(RERANK_FACTOR * k, RERANK_MIN)
        knob = {"ef": max(fetch, 64)} if self.kind == "hnsw" else {"nprobe": IVF_NPROBE}
        found = self.client.search(
            self.collection,
            data=[np.asarray(q, np.float32) for q in queries],
            limit=min(fetch, MAX_LIMIT),
            filter=where,
            search_params={"metric_type": "IP", "params": knob},
            output_fields=["id"],
        )
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for i, hits in enumerate(found):
            got = np.array([hit["id"] for hit in hits], dtype=np.int64)
            exact = self.vectors(got) @ np.asarray(queries[i], np.float32) if len(got) else np.zeros(0, np.float32)
            order = np.argsort(-exact, kind="stable")[:k]
            scores[i, : len(order)], ids[i, : len(order)] = exact[order], got[order]
        width = int((ids >= 0).sum(1).max()) if len(ids) else 0
        return scores[:, :width], ids[:, :width]

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64)]
        rows = {}
        for first in range(0, len(ids), MAX_LIMIT):
            part = ids[first : first + MAX_LIMIT]
            for entity in self.client.get(self.collection, ids=part, output_fields=["vector"]):
                rows[int(entity["id"])] = entity["vector"]
        missing = [i for i in ids if i not in rows]
        if missing:
            raise SearchError(
                f"the Milvus collection {self.collection} lacks {len(missing)} stored vectors: the "
                "index is damaged; build it again"
            )
        return np.array([rows[i] for i in ids], dtype=np.float32).reshape(len(ids), self.manifest.dim)

    def slide_vectors(self, record: SlideRecord) -> np.ndarray:
        out = np.zeros((record.patches, self.manifest.dim), dtype=np.float32)
        seen = np.zeros(record.patches, dtype=bool)
        iterator = self.client.query_iterator(
            self.collection, batch_size=MAX_LIMIT // 4, filter=f"slide == {record.key}", output_fields=["id", "vector"]
        )
        while batch := iterator.next():
            _, rows = split_ids(np.array([entity["id"] for entity in batch], dtype=np.int64))
            out[rows] = np.array([entity["vector"] for entity in batch], dtype=np.float32)
            seen[rows] = True
        iterator.close()
        if not seen.all():
            raise SearchError(
                f"the Milvus collection {self.collection} lacks {int((~seen).sum())} vectors of slide "
                f"{record.name}: the index is damaged; build it again"
            )
        return out
