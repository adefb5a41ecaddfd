"""Report text as one vector per case: MUSK text embeddings of <= 100-token chunks, mean-pooled.

Embeddings can also be computed once and passed around as an ``.npz`` with ``case_ids`` and ``embeddings``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_path
from ..messages import listing
from ..models import MUSK
from ..tokenizer import MuskTokenizer

__all__ = ["chunk_ids", "embed_reports", "load_report_embeddings", "save_report_embeddings"]


def chunk_ids(tokenizer: MuskTokenizer, text: str, max_tokens: int = 100) -> list[list[int]]:
    """``text``'s token ids cut into consecutive chunks of at most ``max_tokens`` ids, each framed by
    ``<s>`` ... ``</s>``; an empty text is one empty chunk."""
    if max_tokens < 3:
        raise ValueError(f"max_tokens must leave room for <s>, </s> and one token, got {max_tokens}")
    inner = tokenizer.encode(text)[1:-1]
    step = max_tokens - 2
    pieces = [inner[i : i + step] for i in range(0, len(inner), step)] or [[]]
    return [[tokenizer.bos_token_id, *p, tokenizer.eos_token_id] for p in pieces]


@torch.inference_mode()
def embed_reports(
    texts: Sequence[str],
    model: MUSK,
    tokenizer: MuskTokenizer,
    max_tokens: int = 100,
    batch_size: int = 32,
) -> np.ndarray:
    """(n, D) float32: each text's chunks embedded by the MUSK text encoder (projection head, L2-normalised),
    averaged, and normalised again."""
    owner, chunks = [], []
    for i, text in enumerate(texts):
        for ids in chunk_ids(tokenizer, text, max_tokens):
            owner.append(i)
            chunks.append(ids)
    param = next(model.parameters())
    vectors = []
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start : start + batch_size]
        width = max(len(c) for c in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.ones((len(batch), width), dtype=torch.long)
        for row, c in enumerate(batch):
            ids[row, : len(c)] = torch.tensor(c)
            mask[row, : len(c)] = 0
        out = model.encode_text(ids.to(param.device), mask.to(param.device), with_head=True, normalize=True)
        vectors.append(out.float().cpu())
    vectors = torch.cat(vectors)
    pooled = torch.zeros(len(texts), vectors.shape[1]).index_add_(0, torch.tensor(owner), vectors)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


def save_report_embeddings(path: str | os.PathLike, case_ids: Sequence[str], embeddings: np.ndarray) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, case_ids=np.array(list(case_ids), dtype=str), embeddings=np.asarray(embeddings, np.float32))
    return path


def load_report_embeddings(path: str | os.PathLike, case_ids: Sequence[str]) -> np.ndarray:
    """Rows of a saved ``.npz`` in the order of ``case_ids``; every case must be there. Files that hold Python
    objects (pickles) are refused unread."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report embeddings not found: {path}")
    fix = "write it with musk.mil.save_report_embeddings (string case_ids, a float (cases, width) embeddings array)"
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable .npz file ({e}); {fix}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array, not arrays 'case_ids' and 'embeddings'; {fix}")
    with data:
        if "case_ids" not in data or "embeddings" not in data:
            raise ValueError(f"{path} needs arrays 'case_ids' and 'embeddings' (it has: {', '.join(data.files)})")
        try:
            ids, embeddings = data["case_ids"], data["embeddings"]
        except ValueError as e:  # an object array: unpickling it could run code
            raise ValueError(f"{path} holds Python objects ({e}); {fix}") from None
    if embeddings.ndim != 2 or embeddings.dtype.kind not in "fiu" or ids.shape != (len(embeddings),):
        raise ValueError(
            f"{path}: embeddings {embeddings.dtype} {embeddings.shape} and case_ids {ids.shape} are not one row of "
            f"real numbers per case id; {fix}"
        )
    row = {str(c): i for i, c in enumerate(ids)}
    missing = [c for c in case_ids if c not in row]
    if missing:
        raise ValueError(f"{path} has no embedding for {len(missing)} case(s): {listing(missing, 20)}")
    return embeddings[[row[c] for c in case_ids]].astype(np.float32)
