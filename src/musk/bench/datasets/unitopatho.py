"""UniToPatho (Barbano et al. 2021): colorectal polyp types and dysplasia grades, six classes.

``unitopatho`` classifies; ``unitopatho_retrieval`` uses train and test together for image retrieval (as
upstream). Two layouts under ``<root>`` (the ``unitopath-public`` folder):

- upstream demo: ``images_train.json`` and ``images_test.json``, lists of image paths relative to ``<root>``
  whose parent folder is the class (e.g. ``800/HP/x.png``);
- official: ``800/train.csv`` and ``800/test.csv`` with the columns ``image_id`` and ``top_label_name``, images
  in ``800/<top_label_name>/<image_id>``.
"""

from __future__ import annotations

from pathlib import Path

from ..data import BenchData, DatasetLayoutError, FileImages
from .layout import check_split, read_json, read_table

FOLDERS = ["HP", "NORM", "TA.HG", "TA.LG", "TVA.HG", "TVA.LG"]
CLASSES = [
    "Hyperplastic Polyp",
    "Normal tissue",
    "Tubular Adenoma, High-Grade dysplasia",
    "Tubular Adenoma, Low-Grade dysplasia",
    "Tubulo-Villous Adenoma, High-Grade dysplasia",
    "Tubulo-Villous Adenoma, Low-Grade dysplasia",
]


def _split_paths(name: str, root: Path, split: str) -> list[Path]:
    if (root / f"images_{split}.json").is_file() or not (root / "800").is_dir():
        listed = read_json(root / f"images_{split}.json", name)
        return [root / p for p in listed]
    table = read_table(root / "800" / f"{split}.csv", name, ["image_id", "top_label_name"])
    return [root / "800" / str(c) / str(i) for i, c in zip(table["image_id"], table["top_label_name"], strict=True)]


def load(name: str, root: Path, split: str) -> BenchData:
    check_split(name, split, ("train", "test"))
    splits = ("train", "test") if name == "unitopatho_retrieval" else (split,)
    paths = [p for s in splits for p in _split_paths(name, root, s)]
    unknown = sorted({p.parent.name for p in paths} - set(FOLDERS))
    if unknown:
        raise DatasetLayoutError(f"{name}: images in unknown class folders {unknown} under {root}; expected {FOLDERS}")
    labels = [FOLDERS.index(p.parent.name) for p in paths]
    classes = list(FOLDERS) if name == "unitopatho_retrieval" else list(CLASSES)
    return BenchData(name, split, FileImages(paths, root), labels=labels, classes=classes)
