"""The MUSK text tokenizer: sentencepiece with XLM-RoBERTa (fairseq) ids, no transformers dependency.

The ids are those of the slow ``transformers.XLMRobertaTokenizer`` (4.x) built from the published
``tokenizer.spm``: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, every other id is the sentencepiece id
plus one, and ``<mask>`` follows the sentencepiece vocabulary. The literal strings ``<s>``, ``</s>``,
``<pad>``, ``<unk>`` and ``<mask>`` inside a text are special tokens, as there; ``<mask>`` also swallows
the whitespace on its left.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm
import torch

from .models.registry import published_repo
from .models.weights import ResolvedWeights, download_from_hub

__all__ = ["TOKENIZER_FILENAME", "MuskTokenizer", "find_tokenizer", "get_tokenizer", "tokenize_for_musk"]

logger = logging.getLogger(__name__)

TOKENIZER_FILENAME = "tokenizer.spm"

_FAIRSEQ_OFFSET = 1
_PADDING_MODES = ("longest", "max_length")


def tokenize_for_musk(text: str, tokenizer, max_len: int = 100) -> tuple[list[int], list[int]]:
    """Upstream MUSK's text procedure: ``(ids, padding_mask)``, both ``max_len`` long, mask 1 = padding.

    ``tokenizer`` is any object with ``encode(text)`` (returning ids framed by ``<s>`` and ``</s>``) and
    ``bos_token_id``, ``eos_token_id``, ``pad_token_id``: a :class:`MuskTokenizer` or a transformers
    ``XLMRobertaTokenizer``. Over-long texts are cut so that ``</s>`` stays the last real token.
    """
    _check_max_length(max_len)
    ids = _frame(tokenizer.encode(text), tokenizer.bos_token_id, tokenizer.eos_token_id, max_len)
    n_pad = max_len - len(ids)
    return ids + [tokenizer.pad_token_id] * n_pad, [0] * len(ids) + [1] * n_pad


def _frame(encoded: Sequence[int], bos: int, eos: int, max_len: int) -> list[int]:
    """Replace the first and last id of ``encoded`` by ``bos``/``eos``, keeping at most ``max_len`` ids."""
    return [bos, *list(encoded[1:-1])[: max_len - 2], eos]


def _check_max_length(max_length: int) -> None:
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (room for <s> and </s>), got {max_length}")


class MuskTokenizer:
    """Sentencepiece tokenizer giving the ids of upstream MUSK (``XLMRobertaTokenizer`` on ``tokenizer.spm``)."""

    bos_token_id: int = 0
    pad_token_id: int = 1
    eos_token_id: int = 2
    unk_token_id: int = 3

    def __init__(self, model_file: str | os.PathLike) -> None:
        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise FileNotFoundError(f"tokenizer model file not found: {self.model_file}")
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        except (RuntimeError, OSError) as e:
            raise ValueError(f"{self.model_file} is not a sentencepiece model (tokenizer.spm): {e}") from None
        self._sp_size = self._sp.get_piece_size()
        self._specials = {
            "<s>": self.bos_token_id,
            "<pad>": self.pad_token_id,
            "</s>": self.eos_token_id,
            "<unk>": self.unk_token_id,
            "<mask>": self.mask_token_id,
        }
        self._special_split = re.compile("(" + "|".join(map(re.escape, self._specials)) + ")")
        logger.debug("loaded sentencepiece model %s (%d pieces)", self.model_file, self._sp_size)

    @property
    def mask_token_id(self) -> int:
        """Id of ``<mask>``: right after the shifted sentencepiece vocabulary."""
        return self._sp_size + _FAIRSEQ_OFFSET

    @property
    def vocab_size(self) -> int:
        """Number of ids: the sentencepiece pieces shifted by one, plus ``<mask>`` (64002 for MUSK)."""
        return self._sp_size + _FAIRSEQ_OFFSET + 1

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of ``<s>``, ``<pad>``, ``</s>``, ``<unk>`` and ``<mask>``."""
        return list(self._specials.values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.model_file)!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` framed by ``<s>`` and ``</s>``, without truncation."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}: {text!r}")
        chunks = self._special_split.split(text)
        # re.split with one group alternates text and special token: odd positions are special tokens.
        for i in range(1, len(chunks), 2):
            if chunks[i] == "<mask>":
                chunks[i - 1] = chunks[i - 1].rstrip()
        ids = [self.bos_token_id]
        for i, chunk in enumerate(chunks):
            if i % 2:
                ids.append(self._specials[chunk])
            elif chunk:
                ids.extend(p + _FAIRSEQ_OFFSET if p else self.unk_token_id for p in self._sp.encode(chunk))
        ids.append(self.eos_token_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (a list or 1-D tensor), special tokens skipped."""
        special = set(self._specials.values())
        pieces = []
        for value in ids:
            i = int(value)
            if i in special:
                continue
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (0 .. {self.vocab_size - 1})")
            pieces.append(self._sp.id_to_piece(i - _FAIRSEQ_OFFSET))
        return "".join(pieces).replace("\u2581", " ").strip()

    def __call__(
        self, texts: str | Sequence[str], max_length: int = 100, padding: str = "longest"
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Batch ``(ids, padding_mask)``, int64 of shape (batch, width), mask 1 = padding.

        Texts longer than ``max_length`` ids are cut so that ``</s>`` stays the last real token.
        ``padding="longest"`` pads to the longest text of the batch (at most ``max_length``),
        ``padding="max_length"`` to ``max_length``. A single string gives a batch of one.
        """
        _check_max_length(max_length)
        if padding not in _PADDING_MODES:
            raise ValueError(f"padding must be one of {_PADDING_MODES}, got {padding!r}")
        if isinstance(texts, str):
            texts = [texts]
        elif not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
        if len(texts) == 0:
            raise ValueError("texts is empty: give at least one text")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}: {text!r}")

        rows = [_frame(self.encode(t), self.bos_token_id, self.eos_token_id, max_length) for t in texts]
        width = max_length if padding == "max_length" else max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        padding_mask = torch.ones((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            padding_mask[r, : len(row)] = 0
        return ids, padding_mask


#: What a user can give instead of the hub's tokenizer, for error messages.
TOKENIZER_ALTERNATIVE = (
    "pass --tokenizer PATH/tokenizer.spm (tokenizer=PATH in Python; --set tokenizer=PATH for pretraining), "
    "or put tokenizer.spm beside local weights"
)


def get_tokenizer(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> MuskTokenizer:
    """The MUSK tokenizer from a local ``tokenizer.spm``, or from the published hub repository when ``path`` is None.

    Hub downloads go through the huggingface cache (``cache_dir``, ``HF_TOKEN`` and offline mode honoured);
    a failure raises :class:`musk.models.WeightsUnavailableError` saying what to do.
    """
    if path is not None:
        return MuskTokenizer(checked_tokenizer_path(path))
    return MuskTokenizer(download_from_hub(published_repo(), TOKENIZER_FILENAME, cache_dir, TOKENIZER_ALTERNATIVE))


def checked_tokenizer_path(path: str | os.PathLike) -> Path:
    """``path`` as a tokenizer file that exists (checked before any model loads)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {path} does not exist (--tokenizer / tokenizer=: a tokenizer.spm file)")
    return path


def find_tokenizer(
    tokenizer: str | os.PathLike | None, weights: ResolvedWeights | None = None, cache_dir=None
) -> MuskTokenizer:
    """The tokenizer that goes with ``weights``: the one given, else ``tokenizer.spm`` beside local weights,
    else the hub's (the weights' repository, or the published one)."""
    if tokenizer is not None:
        return get_tokenizer(tokenizer)
    if weights is not None and weights.path is not None and weights.repo_id is None:
        beside = weights.path.parent / TOKENIZER_FILENAME
        if beside.is_file():
            return MuskTokenizer(beside)
    repo_id = weights.repo_id if weights is not None and weights.repo_id else published_repo()
    return MuskTokenizer(download_from_hub(repo_id, TOKENIZER_FILENAME, cache_dir, TOKENIZER_ALTERNATIVE))
