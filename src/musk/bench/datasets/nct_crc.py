"""NCT-CRC-HE-100K (Kather et al. 2019): nine colorectal tissue classes; CRC-VAL-HE-7K is the test set.

Official layout: ``<root>/NCT-CRC-HE-100K/<CLASS>/*.tif`` (train) and ``<root>/CRC-VAL-HE-7K/<CLASS>/*.tif``
(test), CLASS in ADI BACK DEB LYM MUC MUS NORM STR TUM.
"""

from __future__ import annotations

from pathlib import Path

from ..data import BenchData, FileImages
from .layout import check_split, class_folders, require

FOLDERS = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
CLASSES = [
    "adipose",
    "background",
    "debris",
    "lymphocytes",
    "mucus",
    "smooth muscle",
    "normal colon mucosa",
    "cancer-associated stroma",
    "colorectal adenocarcinoma epithelium",
]
SPLIT_FOLDERS = {"train": "NCT-CRC-HE-100K", "test": "CRC-VAL-HE-7K"}


def load(name: str, root: Path, split: str) -> BenchData:
    check_split(name, split, SPLIT_FOLDERS)
    paths, labels = class_folders(require(root / SPLIT_FOLDERS[split], name, "folder"), name, FOLDERS)
    return BenchData(name, split, FileImages(paths, root), labels=labels, classes=list(CLASSES))
