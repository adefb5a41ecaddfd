"""Masking generators: block-wise masks over the image patch grid, whole-word masks over token ids.

Both take an explicit ``numpy.random.Generator``, so a sample's mask depends only on the seed it is given
(the data pipeline seeds it from the run seed, the epoch and the sample index: the same masks in one
process or many, before and after a resume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BlockMaskGenerator", "WholeWordMasker", "word_start_table"]

IGNORE_INDEX = -100


@dataclass(frozen=True)
class BlockMaskGenerator:
    """Masks ``num_masked`` of the ``grid x grid`` patches as rectangles of ``min_block`` to ``max_block``
    patches with aspect ratios in ``[min_aspect, 1 / min_aspect]`` (BEiT's block-wise masking).

    Rectangles that would overshoot the target are rejected; when no block fits any more (fewer than
    ``min_block`` patches left, or ``max_attempts`` rejections in a row) the remainder is made up of single
    random patches, so every mask has exactly ``num_masked`` patches.
    """

    grid: int
    num_masked: int
    min_block: int = 16
    max_block: int | None = None
    min_aspect: float = 0.3
    max_attempts: int = 10

    def __post_init__(self) -> None:
        n = self.grid * self.grid
        if not 0 < self.num_masked <= n:
            raise ValueError(f"num_masked must be in 1..{n} for a {self.grid}x{self.grid} grid, got {self.num_masked}")
        if not 1 <= self.min_block <= self.upper_block:
            raise ValueError(f"need 1 <= min_block <= max_block, got {self.min_block} and {self.max_block}")
        if not 0 < self.min_aspect <= 1:
            raise ValueError(f"min_aspect must be in (0, 1], got {self.min_aspect}")

    @classmethod
    def from_ratio(cls, grid: int, ratio: float, **kwargs) -> BlockMaskGenerator:
        """A generator masking ``round(ratio * grid**2)`` patches (230 of 576 for 0.4 at 384 px)."""
        return cls(grid, max(1, round(ratio * grid * grid)), **kwargs)

    @property
    def upper_block(self) -> int:
        return min(self.max_block or self.num_masked, self.num_masked)

    def blocks(self, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
        """The boolean (grid, grid) mask and the rectangles ``(top, left, height, width)`` placed in it."""
        mask = np.zeros((self.grid, self.grid), dtype=bool)
        placed: list[tuple[int, int, int, int]] = []
        log_aspect = (math.log(self.min_aspect), -math.log(self.min_aspect))
        failures = 0
        while failures < self.max_attempts:
            left_to_mask = self.num_masked - int(mask.sum())
            if left_to_mask < self.min_block:
                break
            area = rng.uniform(self.min_block, min(self.upper_block, left_to_mask))
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if not (self.min_block <= h * w <= self.upper_block and h <= self.grid and w <= self.grid):
                failures += 1
                continue
            top, left = int(rng.integers(0, self.grid - h + 1)), int(rng.integers(0, self.grid - w + 1))
            new = h * w - int(mask[top : top + h, left : left + w].sum())
            if not 0 < new <= left_to_mask:
                failures += 1
                continue
            mask[top : top + h, left : left + w] = True
            placed.append((top, left, h, w))
            failures = 0
        missing = self.num_masked - int(mask.sum())
        if missing:
            free = np.flatnonzero(~mask.ravel())
            mask.ravel()[rng.choice(free, size=missing, replace=False)] = True
        return mask, placed

    def __call__(self, rng: np.random.Generator) -> torch.Tensor:
        """A boolean mask over the patches in row-major order: shape (grid * grid,)."""
        return torch.from_numpy(self.blocks(rng)[0].ravel().copy())


def word_start_table(tokenizer) -> torch.Tensor:
    """Boolean (vocab_size,): True for ids that begin a word (sentencepiece pieces starting with ``▁``) and
    for the special tokens; a :class:`musk.MuskTokenizer` (or anything with ``model_file``, ``vocab_size``
    and ``all_special_ids``, with ids = sentencepiece ids + 1)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer.model_file))
    table = torch.ones(tokenizer.vocab_size, dtype=torch.bool)
    for piece_id in range(sp.get_piece_size()):
        table[piece_id + 1] = sp.id_to_piece(piece_id).startswith("\u2581")
    table[list(tokenizer.all_special_ids)] = True
    return table


@dataclass(frozen=True)
class WholeWordMasker:
    """BERT masking of whole words: ``ratio`` of the real tokens (whole words, at least one token) are
    chosen; of those ``mask_prob`` become ``mask_id``, ``random_prob`` a random ordinary token, the rest stay.

    ``special_ids`` are never chosen; random replacements are drawn from ``random_low .. vocab_size - 1``
    excluding ``mask_id`` (for MUSK's tokenizer the ordinary ids start at 4).
    """

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    ratio: float = 0.15
    mask_prob: float = 0.8
    random_prob: float = 0.1
    random_low: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")
        if self.mask_prob < 0 or self.random_prob < 0 or self.mask_prob + self.random_prob > 1:
            raise ValueError(f"mask_prob {self.mask_prob} + random_prob {self.random_prob} must be within [0, 1]")

    def words(self, ids: torch.Tensor, word_start: torch.Tensor) -> list[list[int]]:
        """Token positions grouped into words, special tokens left out."""
        special = torch.isin(ids, torch.tensor(self.special_ids, dtype=ids.dtype))
        starts = word_start[ids].tolist()
        words: list[list[int]] = []
        previous_special = True
        for i, (is_special, start) in enumerate(zip(special.tolist(), starts, strict=True)):
            if is_special:
                previous_special = True
                continue
            if start or previous_special or not words:
                words.append([i])
            else:
                words[-1].append(i)
            previous_special = False
        return words

    def __call__(
        self, ids: torch.Tensor, word_start: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked_ids, labels)`` for one 1-D id sequence; labels are ``-100`` where nothing is predicted."""
        words = self.words(ids, word_start)
        labels = torch.full_like(ids, IGNORE_INDEX)
        if not words:
            return ids.clone(), labels
        target = max(1, round(self.ratio * sum(map(len, words))))
        chosen: list[int] = []
        for w in rng.permutation(len(words)):
            if len(chosen) >= target:
                break
            if len(chosen) + len(words[w]) <= target or not chosen:
                chosen.extend(words[w])
        positions = torch.tensor(sorted(chosen), dtype=torch.long)
        labels[positions] = ids[positions]
        masked = ids.clone()
        draw = rng.random(len(positions))
        to_mask = positions[torch.from_numpy(draw < self.mask_prob)]
        to_random = positions[torch.from_numpy((draw >= self.mask_prob) & (draw < self.mask_prob + self.random_prob))]
        masked[to_mask] = self.mask_id
        if len(to_random):
            # ordinary ids except the mask id: draw below mask_id's slot and shift the ones at or above it up
            values = rng.integers(self.random_low, self.vocab_size - 1, size=len(to_random))
            values = values + (values >= self.mask_id)
            masked[to_random] = torch.from_numpy(values).to(ids.dtype)
        return masked, labels
