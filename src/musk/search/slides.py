"""Slide-level search: text -> slides (each slide scored by the mean of its top-K patch similarities, MI-Zero's
pooling; several class prompts give a slide-level zero-shot prediction) and slide -> slides (case retrieval)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .metrics import majority_vote
from .records import SearchError, SlideHit, SlideRecord

__all__ = ["case_vote", "rank_slides", "similar_slides", "top_k_mean"]

#: How many of a slide's best patches are averaged when it is scored against a text.
DEFAULT_TOP_K = 10


def top_k_mean(scores: np.ndarray, top_k: int) -> np.ndarray:
    """(C, n) patch scores -> (C,) the mean of each row's ``top_k`` largest (all of them when n < top_k)."""
    if scores.shape[1] > top_k:
        scores = np.partition(scores, scores.shape[1] - top_k, axis=1)[:, -top_k:]
    return scores.mean(axis=1)


def rank_slides(
    index,
    lm,
    texts: Sequence[str],
    top_k: int = DEFAULT_TOP_K,
    k: int | None = None,
    templates: Sequence[str] | None = None,
    filters: Mapping[str, str | Sequence[str]] | None = None,
    exclude_case: str | None = None,
) -> list[SlideHit]:
    """Slides ranked by the mean similarity of their ``top_k`` best patches to the text (the best ``k``, or all).

    With several texts (class prompts) each slide gets one score per class, its prediction is the best class, and
    its ``score`` that class's score.
    """
    from .query import text_vectors

    if isinstance(texts, str):
        texts = [texts]
    if top_k < 1:
        raise SearchError(f"top_k must be at least 1, got {top_k}")
    if len(set(texts)) != len(texts):
        raise SearchError("the class prompts must be distinct")
    index.check_model(lm)
    queries = text_vectors(lm, texts, templates).astype(np.float64)
    rows = []
    for record in index.select(filters, exclude_case):
        if record.patches:
            pooled = top_k_mean(queries @ index.backend.slide_vectors(record).astype(np.float64).T, top_k)
            rows.append((record, pooled.astype(np.float32)))
    rows.sort(key=lambda row: (-float(row[1].max()), row[0].name))
    return [_class_hit(rank, record, pooled, texts) for rank, (record, pooled) in enumerate(rows[:k], start=1)]


def _class_hit(rank: int, record: SlideRecord, pooled: np.ndarray, texts: Sequence[str]) -> SlideHit:
    best = int(np.argmax(pooled))
    if len(texts) == 1:
        return SlideHit(rank, record.name, float(pooled[0]), record.case, record.label)
    scores = dict(zip(texts, pooled.tolist(), strict=True))
    return SlideHit(rank, record.name, float(pooled[best]), record.case, record.label, scores, texts[best])


def similar_slides(
    index, slide_name: str, k: int = 10, exclude_case: bool = True, embeddings: Mapping[int, np.ndarray] | None = None
) -> list[SlideHit]:
    """The ``k`` slides nearest to ``slide_name`` by the cosine of their slide embeddings (case retrieval).

    The query slide itself is never returned; with ``exclude_case`` neither are the other slides of its case.
    ``embeddings`` (slide key -> vector) replaces the index's own (the mean of the patch vectors), e.g. by the
    slide representation of a trained MIL model.
    """
    query = index.slide(slide_name)
    if not query.patches:
        raise SearchError(f"slide {slide_name!r} has no patches (no tissue found), so it has no embedding")
    candidates = [r for r in index.slides() if r.patches and r.name != query.name]
    if exclude_case:
        candidates = [r for r in candidates if r.case_id != query.case_id]
    if not candidates:
        return []

    def vector(record: SlideRecord) -> np.ndarray:
        return _unit(embeddings[record.key] if embeddings is not None else index.slide_embedding(record))

    scores = np.stack([vector(r) for r in candidates]) @ vector(query)
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], candidates[i].name))[:k]
    return [_slide_hit(rank, candidates[i], scores[i]) for rank, i in enumerate(order, start=1)]


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


def _slide_hit(rank: int, record: SlideRecord, score: float) -> SlideHit:
    return SlideHit(rank, record.name, float(np.float32(score)), record.case, record.label)


def case_vote(hits: Sequence[SlideHit], k: int | None = None) -> str | None:
    """The majority label of the first ``k`` hits (ties go to the nearest); None when none has a label."""
    labels = [h.label for h in (hits[:k] if k else hits) if h.label is not None]
    return majority_vote(labels)
