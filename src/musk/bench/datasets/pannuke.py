"""PanNuke (Gamper et al. 2019/2020) as benign vs malignant tissue patches.

Two layouts:

- upstream demo: ``<root>/PanNuke_all_binary.csv`` with ``image`` (path relative to ``<root>``), ``caption``
  (malignant when it contains "malignant") and ``split`` (train / test);
- official: ``<root>/Fold {1,2,3}/images/fold{n}/images.npy`` (N, 256, 256, 3) and
  ``<root>/Fold {n}/masks/fold{n}/masks.npy`` (N, 256, 256, 6), channel 0 the neoplastic nuclei. A patch is
  malignant when it holds any neoplastic nucleus. Folds 1 and 2 are the train split, fold 3 the test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import ArrayImages, BenchData, FileImages
from .layout import check_split, read_table, require

CLASSES = ["benign", "malignant"]
FOLDS = {"train": (1, 2), "test": (3,)}


class _Folds:
    """Several memory-mapped .npy image arrays indexed as one."""

    def __init__(self, files: list[Path]):
        self.arrays = [np.load(f, mmap_mode="r") for f in files]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        fold = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.arrays[fold][index - self.offsets[fold]]


def _official(name: str, root: Path, split: str) -> BenchData:
    image_files, labels = [], []
    for n in FOLDS[split]:
        fold = root / f"Fold {n}"
        image_files.append(require(fold / "images" / f"fold{n}" / "images.npy", name))
        masks = np.load(require(fold / "masks" / f"fold{n}" / "masks.npy", name), mmap_mode="r")
        labels += [int(np.any(masks[i, :, :, 0] > 0)) for i in range(len(masks))]
    images = ArrayImages(_Folds(image_files), "+".join(str(f.relative_to(root)) for f in image_files), root)
    return BenchData(name, split, images, labels=labels, classes=list(CLASSES))


def load(name: str, root: Path, split: str) -> BenchData:
    check_split(name, split, FOLDS)
    if not (root / "PanNuke_all_binary.csv").is_file() and (root / "Fold 1").is_dir():
        return _official(name, root, split)
    table = read_table(root / "PanNuke_all_binary.csv", name, ["image", "caption", "split"])
    table = table[table["split"] == split]
    labels = [int("malignant" in str(c)) for c in table["caption"]]
    return BenchData(
        name, split, FileImages([root / str(p) for p in table["image"]], root), labels=labels, classes=list(CLASSES)
    )
