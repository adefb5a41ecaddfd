"""Turning records into training tensors: augmented images with patch masks, masked text windows, and
image-caption pairs. Every random choice uses the per-sample generator handed in by the batching
(:mod:`musk.pretrain.batching`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..images import ImageLoadError
from .augment import PretrainAugment
from .data import open_record_image, read_pair
from .masking import BlockMaskGenerator, WholeWordMasker

__all__ = ["ImageBatchMaker", "PairBatchMaker", "TextBatchMaker", "TextWindows"]

logger = logging.getLogger(__name__)


def _load_all(records: Sequence, read) -> list:
    """``read`` each record; an unreadable one is logged by name and replaced by a readable one of the batch."""
    loaded, failed = [], []
    for i, record in enumerate(records):
        try:
            loaded.append(read(record))
        except (ImageLoadError, ValueError, OSError) as e:
            logger.warning("skipping an unreadable sample (%s); a neighbour of its batch takes its place", e)
            loaded.append(None)
            failed.append(i)
    good = [x for x in loaded if x is not None]
    if not good:
        raise ValueError(f"no readable sample in a batch of {len(records)} (first: {records[0]})")
    for n, i in enumerate(failed):
        loaded[i] = good[n % len(good)]
    return loaded


@dataclass(frozen=True)
class ImageBatchMaker:
    """``images`` (B, 3, S, S) and a block-wise ``image_mask`` (B, patches)."""

    augment: PretrainAugment
    mask: BlockMaskGenerator | None = None

    def __call__(self, records: Sequence, rngs: Sequence[np.random.Generator]) -> dict:
        images = _load_all(records, open_record_image)
        out = {"images": torch.stack([self.augment(im, rng) for im, rng in zip(images, rngs, strict=True)])}
        if self.mask is not None:
            out["image_mask"] = torch.stack([self.mask(rng) for rng in rngs])
        return out


@dataclass(frozen=True)
class TextWindows:
    """A document -> its token windows: ``<s>`` + up to ``max_len - 2`` tokens + ``</s>``; documents with
    fewer than ``min_tokens`` tokens (``<s>``/``</s>`` included) and shorter trailing windows are skipped."""

    tokenizer: object
    max_len: int = 100
    min_tokens: int = 30

    def __call__(self, document: str) -> Iterator[list[int]]:
        tok = self.tokenizer
        body = tok.encode(document)[1:-1]
        width = self.max_len - 2
        for start in range(0, max(len(body), 1), width):
            piece = body[start : start + width]
            if len(piece) + 2 >= self.min_tokens:
                yield [tok.bos_token_id, *piece, tok.eos_token_id]


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    padding = torch.ones((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        padding[r, : len(row)] = 0
    return ids, padding


def _mask_rows(ids: torch.Tensor, masker: WholeWordMasker, word_start: torch.Tensor, rngs) -> tuple:
    pairs = [masker(row, word_start, rng) for row, rng in zip(ids, rngs, strict=True)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


@dataclass(frozen=True)
class TextBatchMaker:
    """Token windows -> ``text_ids`` (masked), ``text_padding_mask`` (1 = padding), ``text_labels``."""

    masker: WholeWordMasker
    word_start: torch.Tensor
    pad_id: int = 1

    def __call__(self, records: Sequence[Sequence[int]], rngs: Sequence[np.random.Generator]) -> dict:
        ids, padding = _pad(records, self.pad_id)
        masked, labels = _mask_rows(ids, self.masker, self.word_start, rngs)
        return {"text_ids": masked, "text_padding_mask": padding, "text_labels": labels}


@dataclass(frozen=True)
class PairBatchMaker:
    """Image-caption pairs -> ``images``, ``text_ids`` and ``text_padding_mask`` (the captions), and
    ``masked_ids`` / ``text_labels`` (the captions with masked words) for the decoder's MLM loss."""

    augment: PretrainAugment
    tokenizer: object
    masker: WholeWordMasker
    word_start: torch.Tensor
    max_len: int = 100

    def __call__(self, records: Sequence, rngs: Sequence[np.random.Generator]) -> dict:
        pairs = _load_all(records, read_pair)
        images = torch.stack([self.augment(im, rng) for (im, _), rng in zip(pairs, rngs, strict=True)])
        ids, padding = self.tokenizer([caption for _, caption in pairs], max_length=self.max_len)
        masked, labels = _mask_rows(ids, self.masker, self.word_start, rngs)
        return {"images": images, "text_ids": ids, "text_padding_mask": padding, "masked_ids": masked,
                "text_labels": labels}  # fmt: skip
