"""Pretraining data sources: image folders, WebDataset tar shards, text corpora, image-caption pairs.

A source lists light *records* (a path, a shard member's byte range, a line of text) in an order fixed by
the seed and the epoch; the heavy work (decoding, augmenting, masking) happens later, per batch, only for the
records a process and worker need. Shards and text files are read as they go, never held in memory;
:mod:`musk.pretrain.batching` keeps the position in them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..images import IMAGE_EXTENSIONS, list_images, load_image
from ..messages import listing

__all__ = [
    "ImageFolderSource",
    "PairTableSource",
    "ShardMember",
    "ShardSource",
    "TextSource",
    "image_source",
    "open_record_image",
    "pair_source",
    "shuffle_buffer",
]

logger = logging.getLogger(__name__)

_SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "tif", "tiff")
_CAPTION_KEYS = ("txt", "caption", "text")


def shuffle_buffer(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """Items in a seeded, locally shuffled order, holding at most ``size`` of them (``size`` <= 1: as they come)."""
    if size <= 1:
        yield from items
        return
    buffer: list = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            i = int(rng.integers(len(buffer)))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    order = rng.permutation(len(buffer))
    yield from (buffer[i] for i in order)


def _epoch_rng(seed: int, epoch: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, salt])


@dataclass(frozen=True)
class ImageFolderSource:
    """Every image file under the given folders/files, in a new random order each epoch."""

    paths: tuple[Path, ...]

    @classmethod
    def from_inputs(cls, inputs: Sequence[str | os.PathLike] | str | os.PathLike) -> ImageFolderSource:
        paths = tuple(list_images(inputs))
        if not paths:
            raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {inputs}")
        return cls(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def records(self, epoch: int, seed: int) -> Iterator[Path]:
        for i in _epoch_rng(seed, epoch, 1).permutation(len(self.paths)):
            yield self.paths[i]


@dataclass(frozen=True)
class ShardMember:
    """One sample of a WebDataset shard: its key and the byte range of each of its files."""

    shard: str
    key: str
    files: tuple[tuple[str, int, int], ...]  # (extension, offset, size)

    def read(self, extensions: Sequence[str]) -> tuple[str, bytes] | None:
        """``(extension, bytes)`` of the first of ``extensions`` this sample has, None if it has none."""
        by_ext = {ext: (offset, size) for ext, offset, size in self.files}
        for ext in extensions:
            if ext in by_ext:
                offset, size = by_ext[ext]
                with open(self.shard, "rb") as f:
                    f.seek(offset)
                    return ext, f.read(size)
        return None


def _shard_members(shard: str) -> Iterator[ShardMember]:
    """The samples of one tar shard in file order (members grouped by the name before the first dot);
    only the tar headers are read, the contents are skipped."""
    key, files = None, []
    with tarfile.open(shard, "r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = os.path.basename(info.name)
            base, _, ext = name.partition(".")
            stem = os.path.join(os.path.dirname(info.name), base)
            if stem != key and files:
                yield ShardMember(shard, key, tuple(files))
                files = []
            key = stem
            files.append((ext.lower(), info.offset_data, info.size))
    if files:
        yield ShardMember(shard, key, tuple(files))


@dataclass(frozen=True)
class ShardSource:
    """WebDataset tar shards: shard order reshuffled each epoch, samples mixed in a seeded shuffle buffer."""

    shards: tuple[str, ...]
    buffer: int = 1000

    @classmethod
    def from_inputs(cls, inputs: Sequence[str | os.PathLike] | str | os.PathLike, buffer: int = 1000) -> ShardSource:
        items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        shards: list[str] = []
        for item in map(Path, items):
            shards += sorted(map(str, item.glob("*.tar"))) if item.is_dir() else [str(item)]
        missing = [s for s in shards if not Path(s).is_file()]
        if missing or not shards:
            raise FileNotFoundError(f"tar shards not found: {listing(missing) if missing else inputs}")
        return cls(tuple(shards), buffer)

    def records(self, epoch: int, seed: int) -> Iterator[ShardMember]:
        rng = _epoch_rng(seed, epoch, 2)
        order = rng.permutation(len(self.shards))
        members = (m for i in order for m in _shard_members(self.shards[i]))
        yield from shuffle_buffer(members, self.buffer, rng)


def open_record_image(record: Path | ShardMember) -> Image.Image:
    """The image of a record (an image file or a shard sample), as RGB."""
    if isinstance(record, ShardMember):
        found = record.read(_SHARD_IMAGE_KEYS)
        if found is None:
            raise ValueError(f"sample {record.key!r} of {record.shard} has no image ({', '.join(_SHARD_IMAGE_KEYS)})")
        try:
            return Image.open(io.BytesIO(found[1])).convert("RGB")
        except Exception as e:
            raise ValueError(f"cannot decode {record.key}.{found[0]} in {record.shard}: {e}") from e
    return load_image(record)


def image_source(inputs, buffer: int = 1000) -> ImageFolderSource | ShardSource:
    """Tar shards when the inputs are ``.tar`` files or folders of them, an image folder otherwise."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    paths = [Path(i) for i in items]
    if all(p.suffix == ".tar" or (p.is_dir() and any(p.glob("*.tar"))) for p in paths):
        return ShardSource.from_inputs(items, buffer)
    return ImageFolderSource.from_inputs(items)


@dataclass(frozen=True)
class TextSource:
    """Text corpora read as they go: ``.txt`` (one document per line) or ``.jsonl`` (the ``field`` of each
    object); files in a new order each epoch, documents mixed in a seeded shuffle buffer; blank lines skipped."""

    files: tuple[Path, ...]
    field: str = "text"
    buffer: int = 1000

    @classmethod
    def from_inputs(cls, inputs, field: str = "text", buffer: int = 1000) -> TextSource:
        items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        files: list[Path] = []
        for item in map(Path, items):
            if item.is_dir():
                files += sorted(p for p in item.rglob("*") if p.suffix in (".txt", ".jsonl"))
            elif item.is_file():
                files.append(item)
            else:
                raise FileNotFoundError(f"text corpus not found: {item}")
        if not files:
            raise FileNotFoundError(f"no .txt or .jsonl files under {inputs}")
        return cls(tuple(files), field, buffer)

    def _documents(self, path: Path) -> Iterator[str]:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if path.suffix != ".jsonl":
                    yield line.strip()
                    continue
                try:
                    text = json.loads(line)[self.field]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(
                        f"{path}:{line_no}: expected a JSON object with a {self.field!r} string ({e}); "
                        f"fix the line or set the text field name"
                    ) from e
                yield str(text)

    def records(self, epoch: int, seed: int) -> Iterator[str]:
        rng = _epoch_rng(seed, epoch, 3)
        docs = (d for i in rng.permutation(len(self.files)) for d in self._documents(self.files[i]))
        yield from shuffle_buffer(docs, self.buffer, rng)


@dataclass(frozen=True)
class PairTableSource:
    """Image-caption pairs from a CSV (header) or JSONL file: an image path column (relative paths are
    relative to the file's folder) and a caption column."""

    pairs: tuple[tuple[Path, str], ...]

    @classmethod
    def from_file(cls, path: str | os.PathLike, image_key: str = "image", caption_key: str = "caption"):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"pair table not found: {path}")
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                rows = [(i, json.loads(line)) for i, line in enumerate(f, 1) if line.strip()]
        else:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(enumerate(csv.DictReader(f), 2))
        pairs = []
        for line_no, row in rows:
            if image_key not in row or caption_key not in row:
                raise ValueError(
                    f"{path}:{line_no}: needs the columns {image_key!r} and {caption_key!r}, has "
                    f"{listing(row, sort=True)}; rename them or pass image_key/caption_key"
                )
            image = Path(row[image_key])
            pairs.append((image if image.is_absolute() else path.parent / image, str(row[caption_key])))
        if not pairs:
            raise ValueError(f"{path} has no pairs")
        return cls(tuple(pairs))

    def __len__(self) -> int:
        return len(self.pairs)

    def records(self, epoch: int, seed: int) -> Iterator[tuple[Path, str]]:
        for i in _epoch_rng(seed, epoch, 4).permutation(len(self.pairs)):
            yield self.pairs[i]


def read_pair(record: tuple[Path, str] | ShardMember) -> tuple[Image.Image, str]:
    """The image and caption of a pair record (a table row or a shard sample with an image and a ``.txt``)."""
    if isinstance(record, ShardMember):
        found = record.read(_CAPTION_KEYS)
        if found is None:
            raise ValueError(f"sample {record.key!r} of {record.shard} has no caption ({', '.join(_CAPTION_KEYS)})")
        return open_record_image(record), found[1].decode("utf-8").strip()
    return load_image(record[0]), record[1]


def pair_source(inputs, buffer: int = 1000, **keys) -> PairTableSource | ShardSource:
    """A CSV/JSONL pair table, or WebDataset shards holding an image and a caption per sample."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if len(items) == 1 and Path(items[0]).suffix in (".csv", ".jsonl"):
        return PairTableSource.from_file(items[0], **keys)
    return ShardSource.from_inputs(items, buffer)
