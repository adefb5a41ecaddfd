"""VQA examples from PathVQA's hub parquet files or a generic JSONL/CSV, and the torch dataset over them.

Parquet (the Hugging Face hub layout of PathVQA): ``data/train-*.parquet``, ``data/validation-*.parquet``,
``data/test-*.parquet`` with columns ``image`` (``{"bytes", "path"}``), ``question``, ``answer``.
JSONL/CSV: one row per question with ``image`` (a path, relative to the file's folder), ``question``,
``answer`` and optionally ``question_type`` and ``id``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..images import ImageLoadError, load_image, to_rgb
from ..jsonl import numbered_json_lines
from ..messages import listing
from ..tokenizer import MuskTokenizer
from .answers import AnswerVocab, question_type

__all__ = ["REQUIRED_COLUMNS", "VQACollator", "VQADataset", "VQAExample", "find_split", "load_examples", "load_split"]

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image", "question", "answer")
SPLIT_ALIASES = {"validation": ("validation", "val", "valid", "dev"), "train": ("train",), "test": ("test",)}
TABLE_SUFFIXES = (".parquet", ".jsonl", ".csv")


@dataclass(frozen=True)
class VQAExample:
    """One question about one image. ``image`` is a file path or the encoded image bytes."""

    image: str | bytes
    question: str
    answer: str
    question_type: str
    id: str

    @property
    def image_name(self) -> str:
        """How error messages and predictions name the image."""
        return self.image if isinstance(self.image, str) else f"<{len(self.image)} bytes>"


def _aliases(split: str) -> tuple[str, ...]:
    for names in SPLIT_ALIASES.values():
        if split in names:
            return names
    return (split,)


def find_split(source: str | os.PathLike, split: str) -> list[Path]:
    """The files holding ``split`` of a dataset: ``source`` itself when it is a file, else the split's files
    under the folder (``<split>-*.parquet`` / ``<split>.parquet`` anywhere below it, or ``<split>.jsonl`` /
    ``<split>.csv``); ``validation`` also answers to ``val``, ``valid`` and ``dev``."""
    source = Path(source).expanduser()
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"VQA data not found: {source}")
    for name in _aliases(split):
        parquet = sorted(p for p in source.rglob(f"{name}*.parquet") if p.stem == name or p.stem.startswith(name + "-"))
        if parquet:
            return parquet
        for suffix in (".jsonl", ".csv"):
            if (source / f"{name}{suffix}").is_file():
                return [source / f"{name}{suffix}"]
    raise FileNotFoundError(
        f"no {split!r} split in {source}: expected {split}-*.parquet (the PathVQA hub layout) "
        f"or {split}.jsonl / {split}.csv"
    )


def _read_rows(path: Path) -> list[tuple[str, dict]]:
    """The rows of a table, each with where it is: ``<file>, line <n>`` (JSONL, CSV) or ``<file>, row <n>``."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("reading parquet needs pandas and pyarrow: pip install 'musk-pathology[vqa]'") from e
        return [(f"{path}, row {n}", row) for n, row in enumerate(pd.read_parquet(path).to_dict("records"))]
    if suffix in (".jsonl", ".json"):
        rows = []
        with open(path, encoding="utf-8-sig") as f:
            for number, row in numbered_json_lines(f, path):
                where = f"{path}, line {number}"
                if not isinstance(row, dict):
                    raise ValueError(
                        f"{where}: expected a JSON object with {', '.join(REQUIRED_COLUMNS)}; "
                        f"got {json.dumps(row)[:80]}"
                    )
                rows.append((where, row))
        return rows
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark is not a column name
            reader = csv.DictReader(f)
            return [(f"{path}, line {reader.line_num}", row) for row in reader]
    raise ValueError(f"{path}: unsupported VQA table format {suffix!r}; use one of {TABLE_SUFFIXES}")


def _text(value, name: str, where: str) -> str:
    """A question or answer as text: numbers in their usual form (3, 2.5); empty, missing or boolean is an error."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f'{where}: the {name} is the boolean {value}; write it as text (e.g. "yes" or "no")')
    if isinstance(value, numbers.Real) and not math.isnan(value):
        value = str(int(value)) if float(value).is_integer() else str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: empty or missing {name} ({value!r})")
    return value


def _image_field(value, root: Path, where: str) -> str | bytes:
    if isinstance(value, dict):  # the hub's Image feature: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: no image (got {value!r})")
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else root / path)


def load_examples(path: str | os.PathLike) -> list[VQAExample]:
    """All examples of one table file (.parquet, .jsonl, .csv), checked: required columns present, no empty
    question or answer, every image file there (missing ones are named)."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise ValueError(f"{path} holds no examples")
    columns = set().union(*(r.keys() for _, r in rows))
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(
            f"{path} lacks the column(s) {missing}; it has {listing(columns, sort=True)}, needs "
            f"{list(REQUIRED_COLUMNS)}"
        )
    examples = []
    for n, (where, row) in enumerate(rows):
        question, answer = _text(row.get("question"), "question", where), _text(row.get("answer"), "answer", where)
        qtype = row.get("question_type")
        qtype = qtype.strip() if isinstance(qtype, str) and qtype.strip() else question_type(question, answer)
        ident = row.get("id")
        ident = str(ident) if ident is not None and str(ident) not in ("", "nan") else f"{path.stem}:{n}"
        examples.append(VQAExample(_image_field(row.get("image"), path.parent, where), question, answer, qtype, ident))
    absent = sorted({e.image for e in examples if isinstance(e.image, str) and not os.path.isfile(e.image)})
    if absent:
        raise FileNotFoundError(f"{path}: {len(absent)} image file(s) not found: {listing(absent, 5)}")
    return examples


def load_split(source: str | os.PathLike, split: str) -> list[VQAExample]:
    """The examples of one split (see :func:`find_split` for where they are looked for); never empty."""
    files = find_split(source, split)
    examples = [e for f in files for e in load_examples(f)]
    if not examples:
        raise ValueError(f"the {split!r} split of {source} is empty")
    logger.info("%s split: %d questions from %d file(s)", split, len(examples), len(files))
    return examples


def open_image(image: str | bytes) -> Image.Image:
    """An example's image as RGB: a file through :func:`musk.load_image`, bytes decoded in memory."""
    if isinstance(image, str):
        return load_image(image)
    try:
        with Image.open(io.BytesIO(image)) as im:
            im.load()
            return to_rgb(im)
    except Exception as e:
        raise ImageLoadError(f"cannot decode an embedded image ({len(image)} bytes): {e}") from e


class VQADataset(Dataset):
    """Examples as ``(image tensor, question, label, index)``; ``label`` is -1 for answers outside ``vocab``."""

    def __init__(
        self, examples: Sequence[VQAExample], transform: Callable[[Image.Image], torch.Tensor], vocab: AnswerVocab
    ):
        if not examples:
            raise ValueError("a VQA dataset needs at least one example")
        self.examples = list(examples)
        self.transform = transform
        self.labels = [vocab.index(e.answer) for e in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, int, int]:
        example = self.examples[i]
        return self.transform(open_image(example.image)), example.question, self.labels[i], i


class VQACollator:
    """Stacks images and tokenises the batch's questions (padded to the longest, padding masked)."""

    def __init__(self, tokenizer: MuskTokenizer, max_length: int = 100):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, batch: Sequence[tuple[torch.Tensor, str, int, int]]) -> dict[str, torch.Tensor]:
        images, questions, labels, indices = zip(*batch, strict=True)
        ids, padding_mask = self.tokenizer(list(questions), max_length=self.max_length)
        return {
            "images": torch.stack(images),
            "ids": ids,
            "padding_mask": padding_mask,
            "labels": torch.tensor(labels, dtype=torch.long),
            "index": torch.tensor(indices, dtype=torch.long),
        }
