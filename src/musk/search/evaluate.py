"""``musk search eval``: leave-one-case-out slide and patch retrieval on a labelled cohort, and the recall of the
approximate index against exact search on the same queries."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .backend import patch_ids, split_ids
from .cases import check_cases_indexed, read_cases
from .metrics import acc_at_k, mmv_at_k, recall_at_k
from .records import SearchError, SlideRecord

__all__ = ["evaluate_index"]


@dataclass(frozen=True)
class EvalSettings:
    ks: tuple[int, ...] = (1, 3, 5)
    vote_k: int = 5
    patch_queries: int = 200
    recall_k: int = 10
    seed: int = 0


def _labelled(index, cases_csv) -> list[SlideRecord]:
    """The index's slides with the manifest's case and label, those with a label and patches."""
    cases = read_cases(cases_csv)
    check_cases_indexed(cases, {r.name for r in index.slides()}, cases_csv)
    records = [
        replace(r, case=cases[r.name].case, label=cases[r.name].label) for r in index.slides() if r.name in cases
    ]
    labelled = [r for r in records if r.label is not None and r.patches]
    if len({r.case_id for r in labelled}) < 2:
        raise SearchError(f"{cases_csv}: leave-one-case-out retrieval needs labelled slides of at least two cases")
    return labelled


def _metrics(labels: Sequence, retrieved: Sequence[Sequence], settings: EvalSettings) -> dict:
    out = {"queries": len(labels)}
    out |= {f"acc@{k}": acc_at_k(labels, retrieved, k) for k in settings.ks}
    out[f"mmv@{settings.vote_k}"] = mmv_at_k(labels, retrieved, settings.vote_k)
    return out


def slide_retrieval(index, records: list[SlideRecord], settings: EvalSettings) -> dict:
    """Each slide's embedding against the slides of the other cases (cosine, ties by name)."""
    matrix = np.stack([index.slide_embedding(r).astype(np.float64) for r in records])
    scores = matrix @ matrix.T
    names = np.array([r.name for r in records])
    retrieved = []
    for i, query in enumerate(records):
        others = [j for j, r in enumerate(records) if r.case_id != query.case_id]
        ranked = sorted(others, key=lambda j: (-scores[i, j], names[j]))
        retrieved.append([records[j].label for j in ranked])
    return _metrics([r.label for r in records], retrieved, settings)


def _sample_patches(records: list[SlideRecord], count: int, seed: int) -> list[tuple[SlideRecord, int]]:
    total = sum(r.patches for r in records)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=min(count, total), replace=False))
    starts = np.cumsum([0] + [r.patches for r in records])
    slide_of = np.searchsorted(starts, chosen, side="right") - 1
    return [(records[s], int(c - starts[s])) for s, c in zip(slide_of, chosen, strict=True)]


def _exact_neighbours(index, queries: np.ndarray, query_cases: list[str], records, k: int) -> list[list[int]]:
    """Brute force over every stored vector of ``records``: each query's ``k`` best ids outside its own case."""
    best = [[] for _ in queries]  # (score, id) lists
    for record in records:
        scores = queries.astype(np.float64) @ index.backend.slide_vectors(record).astype(np.float64).T
        ids = patch_ids(record.key, 0, record.patches)
        for q, case in enumerate(query_cases):
            if case != record.case_id:
                top = np.argsort(-scores[q], kind="stable")[:k]
                best[q] = sorted(best[q] + [(-scores[q, t], int(ids[t])) for t in top])[:k]
    return [[i for _, i in pairs] for pairs in best]


def patch_retrieval(index, records: list[SlideRecord], settings: EvalSettings) -> dict:
    """Sampled patches against the patches of the other cases: the index's hits, and exact search's."""
    sample = _sample_patches(records, settings.patch_queries, settings.seed)
    ids = np.array([patch_ids(r.key, p, 1)[0] for r, p in sample], dtype=np.int64)
    queries = index.backend.vectors(ids)
    label_of = {r.key: r.label for r in records}
    depth = max(*settings.ks, settings.vote_k, settings.recall_k)
    found, retrieved = [], []
    for (record, _), query in zip(sample, queries, strict=True):
        keys = [r.key for r in records if r.case_id != record.case_id]
        _, hit_ids = index.backend.search(query[None], depth, keys)
        found.append(hit_ids[0].tolist())
        retrieved.append([label_of[int(key)] for key in split_ids(hit_ids[0])[0]])
    out = _metrics([r.label for r, _ in sample], retrieved, settings)
    exact = _exact_neighbours(index, queries, [r.case_id for r, _ in sample], records, settings.recall_k)
    out[f"recall@{settings.recall_k}"] = recall_at_k(found, exact, settings.recall_k)
    return out


def evaluate_index(
    index, cases_csv: str | os.PathLike, patch_queries: int = 200, recall_k: int = 10, seed: int = 0
) -> dict:
    """Leave-one-case-out retrieval over the labelled slides of ``cases_csv``: Acc@1/3/5 and mMV@5 for slides
    (by slide embedding) and for sampled patches, and recall@``recall_k`` of the index against exact search."""
    settings = EvalSettings(patch_queries=patch_queries, recall_k=recall_k, seed=seed)
    records = _labelled(index, cases_csv)
    return {
        "manifest": str(cases_csv),
        "index": {k: v for k, v in index.info().items() if k in ("backend", "kind", "vectors", "slides", "model")},
        "slides": slide_retrieval(index, records, settings),
        "patches": patch_retrieval(index, records, settings),
    }
