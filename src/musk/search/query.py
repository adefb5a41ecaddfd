"""An opened index and its patch queries: text -> patches, image -> patches, one slide's patches scored.

from musk.search import open_index
index = open_index("index/")
hits = index.search_text(lm, "mitotic figure", k=20, per_slide=3, filters={"label": "tumor"})
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..messages import listing
from .backend import Backend, open_backend, split_ids
from .build import check_model
from .layout import COORDS, SLIDE_VECTORS, IndexManifest, read_manifest
from .records import Hit, SearchError, SlideRecord, UnknownSlideError
from .store import RowFile

__all__ = ["FILTER_KEYS", "SearchIndex", "open_index"]

FILTER_KEYS = ("label", "case")
#: The most candidates one patch query asks the backend for (``per_slide`` fetches more than k).
MAX_FETCH = 16_384


def open_index(directory: str | os.PathLike) -> SearchIndex:
    """The finished index in ``directory``; a half-written or foreign folder raises ``SearchError`` saying why."""
    directory = Path(directory).expanduser()
    manifest = read_manifest(directory)
    return SearchIndex(directory, manifest, open_backend(directory, manifest))


class SearchIndex:
    """Queries over one committed state of an index (a later ``add`` is seen by opening the index again)."""

    def __init__(self, directory: Path, manifest: IndexManifest, backend: Backend):
        self.directory, self.manifest, self.backend = directory, manifest, backend
        self._by_name = {r.name: r for r in manifest.slides}
        self._by_key = {r.key: r for r in manifest.slides}
        self._coords = RowFile(directory / COORDS, np.int64, 2).read(manifest.rows)
        self._slide_vectors = RowFile(directory / SLIDE_VECTORS, np.float32, manifest.dim).read(manifest.next_key)

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()

    # ---- what the index holds ----------------------------------------------------------------
    def info(self) -> dict:
        m = self.manifest
        kinds = sorted({r.feature_kind for r in m.slides if r.feature_kind})
        return {
            "model": m.model,
            "weights_sha256": m.weights_sha256,
            "fingerprint": m.fingerprint,
            "feature_kind": "+".join(kinds),
            "backend": m.backend,
            "kind": m.backend_state.get("kind", "flat"),
            "requested_kind": m.kind,
            "dim": m.dim,
            "vectors": m.vectors,
            "slides": len(m.slides),
            "cases": len({r.case_id for r in m.slides}),
            "labels": sorted({r.label for r in m.slides if r.label}),
            "stored_rows": m.rows,
            "generation": m.generation,
            "created": m.created,
            "updated": m.updated,
            "path": str(self.directory),
        }

    def slides(self) -> list[SlideRecord]:
        return list(self.manifest.slides)

    def slide(self, name: str) -> SlideRecord:
        record = self._by_name.get(name)
        if record is None:
            raise UnknownSlideError(
                f"slide {name!r} is not in the index {self.directory} ({len(self._by_name)} slides: "
                f"{listing(sorted(self._by_name))})"
            )
        return record

    def check_model(self, lm) -> None:
        """``SearchError`` naming both fingerprints unless ``lm`` has the index's weights."""
        check_model(self.manifest, lm)

    def coords(self, record: SlideRecord) -> np.ndarray:
        """(patches, 2) level-0 top-left corners of a slide's patches."""
        return np.asarray(self._coords[record.start : record.start + record.patches])

    def slide_embedding(self, record: SlideRecord) -> np.ndarray:
        """The slide's embedding: the normalised mean of its patch vectors (zero for a slide without patches)."""
        return np.asarray(self._slide_vectors[record.key])

    # ---- choosing slides -----------------------------------------------------------------------
    def select(
        self, filters: Mapping[str, str | Sequence[str]] | None = None, exclude_case: str | None = None
    ) -> list[SlideRecord]:
        """The slides whose label/case is (one of) ``filters``' values, without those of ``exclude_case``."""
        chosen = self.manifest.slides
        for key, wanted in (filters or {}).items():
            if key not in FILTER_KEYS:
                raise SearchError(f"cannot filter on {key!r}; filters are {', '.join(FILTER_KEYS)}")
            wanted = {wanted} if isinstance(wanted, str) else set(wanted)
            known = {r.label if key == "label" else r.case_id for r in self.manifest.slides} - {None}
            if not wanted & known:
                raise SearchError(
                    f"no indexed slide has the {key} {listing(sorted(wanted))}; the index's "
                    f"{key}s: {listing(sorted(known))}"
                )
            chosen = [r for r in chosen if (r.label if key == "label" else r.case_id) in wanted]
        if exclude_case is not None:
            chosen = [r for r in chosen if r.case_id != exclude_case]
        return chosen

    def _keys(self, filters, exclude_case) -> list[int] | None:
        if not filters and exclude_case is None:
            return None
        return [r.key for r in self.select(filters, exclude_case)]

    # ---- patch queries ------------------------------------------------------------------------
    def search_vector(
        self,
        query: np.ndarray,
        k: int = 20,
        per_slide: int | None = None,
        filters: Mapping[str, str | Sequence[str]] | None = None,
        exclude_case: str | None = None,
    ) -> list[Hit]:
        """The ``k`` patches nearest to a unit vector of the index's space (at most ``per_slide`` per slide)."""
        if k < 1:
            raise SearchError(f"k must be at least 1, got {k}")
        if per_slide is not None and per_slide < 1:
            raise SearchError(f"per_slide must be at least 1, got {per_slide}")
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape != (self.manifest.dim,):
            raise SearchError(
                f"the query vector has {query.size} values; the index holds {self.manifest.dim}-d vectors"
            )
        keys = self._keys(filters, exclude_case)
        fetch = k if per_slide is None else min(4 * k, MAX_FETCH)
        while True:
            _, ids = self.backend.search(query[None], fetch, keys)
            hits = self._capped(self._hits(query, ids[0]), per_slide)
            if len(hits) >= k or ids.shape[1] < fetch or fetch >= MAX_FETCH:
                return [Hit(rank, *hit[1:]) for rank, hit in enumerate(hits[:k], start=1)]
            fetch = min(4 * fetch, MAX_FETCH)

    def _hits(self, query: np.ndarray, ids: np.ndarray) -> list[tuple]:
        """Candidates scored exactly (float64 products of the stored vectors), best first."""
        ids = ids[ids >= 0]
        if not len(ids):
            return []
        scores = (self.backend.vectors(ids).astype(np.float64) @ query.astype(np.float64)).astype(np.float32)
        keys, patches = split_ids(ids)
        rows = []
        for key, patch, score in zip(keys.tolist(), patches.tolist(), scores.tolist(), strict=True):
            r = self._by_key[key]
            x, y = (int(v) for v in self._coords[r.start + patch])
            rows.append((0, r.name, x, y, r.patch_size_level0, score, r.case, r.label))
        return sorted(rows, key=lambda h: (-h[5], h[1], h[3], h[2]))

    @staticmethod
    def _capped(hits: list[tuple], per_slide: int | None) -> list[tuple]:
        if per_slide is None:
            return hits
        taken: dict[str, int] = {}
        kept = []
        for hit in hits:
            if taken.get(hit[1], 0) < per_slide:
                taken[hit[1]] = taken.get(hit[1], 0) + 1
                kept.append(hit)
        return kept

    def search_text(
        self,
        lm,
        text: str,
        k: int = 20,
        per_slide: int | None = None,
        templates: Sequence[str] | None = None,
        filters: Mapping[str, str | Sequence[str]] | None = None,
        exclude_case: str | None = None,
    ) -> list[Hit]:
        """The patches nearest to a text (through a prompt ensemble when ``templates`` are given)."""
        self.check_model(lm)
        return self.search_vector(text_vectors(lm, [text], templates)[0], k, per_slide, filters, exclude_case)

    def search_image(
        self,
        lm,
        image,
        k: int = 20,
        per_slide: int | None = None,
        filters: Mapping[str, str | Sequence[str]] | None = None,
        exclude_case: str | None = None,
    ) -> list[Hit]:
        """The patches nearest to an image (a path, a PIL image or an (H, W, 3) uint8 array), preprocessed as MUSK's."""
        self.check_model(lm)
        return self.search_vector(image_vector(lm, image), k, per_slide, filters, exclude_case)

    def slide_scores(
        self, lm, slide_name: str, text: str | None = None, image=None
    ) -> tuple[np.ndarray, int, np.ndarray]:
        """Every patch of one slide scored against a text or an image: ``(coords, patch_size_level0, scores)``."""
        record = self.slide(slide_name)
        if (text is None) == (image is None):
            raise SearchError("give one of text and image")
        self.check_model(lm)
        query = text_vectors(lm, [text])[0] if text is not None else image_vector(lm, image)
        vectors = self.backend.slide_vectors(record).astype(np.float64)
        scores = (vectors @ query.astype(np.float64)).astype(np.float32)
        return self.coords(record), record.patch_size_level0, scores

    # ---- slide-level queries (musk.search.slides) -----------------------------------------------
    def rank_slides(
        self,
        lm,
        texts,
        top_k: int = 10,
        k: int | None = None,
        templates=None,
        filters=None,
        exclude_case: str | None = None,
    ) -> list:
        """Slides ranked against one text, or scored against several class prompts (see ``musk.search.slides``)."""
        from .slides import rank_slides

        return rank_slides(self, lm, texts, top_k, k, templates, filters, exclude_case)

    def similar_slides(self, slide_name: str, k: int = 10, exclude_case: bool = True, embeddings=None) -> list:
        """The slides nearest to one slide (case retrieval; see ``musk.search.slides``)."""
        from .slides import similar_slides

        return similar_slides(self, slide_name, k, exclude_case, embeddings)


def text_vectors(lm, texts: Sequence[str], templates: Sequence[str] | None = None) -> np.ndarray:
    """(len(texts), D) unit vectors of texts, each the mean over ``templates`` (filled with it) when given."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings")
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise SearchError("the text query is empty: give words to search for")
    if templates:
        return np.asarray(lm.class_embeddings([t.strip() for t in texts], list(templates)).cpu(), dtype=np.float32)
    return np.asarray(lm.embed_texts([t.strip() for t in texts]), dtype=np.float32)


def image_vector(lm, image) -> np.ndarray:
    """The unit vector of one image; ``SearchError`` when it cannot be read."""
    result = lm.embed_images([image])
    if result.failed or not len(result.vectors):
        error = next(iter(result.failed.values()), "it could not be read")
        raise SearchError(f"cannot use the image {image if isinstance(image, (str, Path)) else 'given'}: {error}")
    return np.asarray(result.vectors[0], dtype=np.float32)
