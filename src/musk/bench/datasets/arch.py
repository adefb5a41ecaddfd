"""ARCH (Gamper & Rajpoot, CVPR 2021): BookSet and PubmedSet image-caption retrieval.

Official layout: ``<root>/books_set/captions.json`` and ``<root>/pubmed_set/captions.json`` (an object keyed by
row number whose values have ``uuid`` and ``caption``) with images ``<set>/images/<uuid>.<png|jpg>``. One caption
often belongs to several images (the panels of a figure); retrieval counts any of them as correct.
"""

from __future__ import annotations

from pathlib import Path

from ..data import BenchData, DatasetLayoutError, FileImages
from .layout import read_json, require

SETS = {"bookset_retrieval": "books_set", "pubmedset_retrieval": "pubmed_set"}


def _image(folder: Path, uuid: str, dataset: str) -> Path:
    for suffix in (".png", ".jpg", ".jpeg"):
        if (folder / f"{uuid}{suffix}").is_file():
            return folder / f"{uuid}{suffix}"
    raise DatasetLayoutError(f"{dataset}: no image {folder}/{uuid}.png (or .jpg) for the caption of uuid {uuid!r}")


def load(name: str, root: Path, split: str) -> BenchData:
    folder = root / SETS[name] if (root / SETS[name]).is_dir() else root
    entries = read_json(require(folder / "captions.json", name), name)
    paths, captions = [], []
    for key, entry in entries.items():
        if "uuid" not in entry or "caption" not in entry:
            raise DatasetLayoutError(f"{name}: {folder / 'captions.json'} entry {key!r} lacks 'uuid' or 'caption'")
        paths.append(_image(folder / "images", entry["uuid"], name))
        captions.append(str(entry["caption"]))
    return BenchData(name, split, FileImages(paths, root), captions=captions, caption_images=range(len(paths)))
